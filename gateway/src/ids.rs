//! Random identifiers: request ids, ledger row ids and the like.
//!
//! uuid's `new_v4` asks the kernel for 16 bytes each time (a `getrandom`
//! system call), and a request took two of them: its `x-request-id` and its
//! ledger row's id. These come from rand's thread-local generator instead,
//! a ChaCha stream seeded from the kernel and reseeded as it goes, which is
//! as unpredictable for an id and costs no system call.

use axum::http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// A random (version 4) UUID.
#[must_use]
pub fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

/// `x-request-id` for a request that came without one: a random UUID, as
/// tower-http's `MakeRequestUuid` makes, without its system call.
#[derive(Clone, Copy, Default)]
pub struct MakeRandomRequestId;

impl MakeRequestId for MakeRandomRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        HeaderValue::try_from(random_uuid().to_string())
            .ok()
            .map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_differ() {
        let (a, b) = (random_uuid(), random_uuid());
        assert_eq!(a.get_version(), Some(uuid::Version::Random));
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(a, b);
    }

    #[test]
    fn request_ids_are_hyphenated_uuids() {
        let id = MakeRandomRequestId
            .make_request_id(&Request::new(()))
            .expect("an id");
        let text = id.header_value().to_str().expect("ascii");
        let parsed = uuid::Uuid::parse_str(text).expect("a uuid");
        assert_eq!(parsed.hyphenated().to_string(), text);
        assert_eq!(parsed.get_version(), Some(uuid::Version::Random));
    }
}
