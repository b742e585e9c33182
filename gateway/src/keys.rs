//! API key generation and hashing.
//!
//! A key is `gw-` followed by 32 random bytes in hex. Only its SHA-256 (hex)
//! is stored, with a short display prefix so operators can tell keys apart
//! in listings. Lookup is by hash, so no constant-time comparison is needed:
//! the database index compares hashes, and a hash reveals nothing usable.
//! The plaintext lives only in [`NewKey::plaintext`], a `SecretString` that
//! cannot be printed by accident through `Debug` or `Display`.

use rand::RngCore;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// Every key starts with this, which lets secret scanners (ours included)
/// recognise leaked keys.
pub const KEY_PREFIX: &str = "gw-";

/// Admin tokens (the admin API's and dashboard's credential) start with
/// this instead: no admin token is a tenant key, and the other way round.
pub const ADMIN_TOKEN_PREFIX: &str = "gwadmin-";

/// Hex digits after the prefix kept as the display prefix: enough to tell
/// keys apart, far too few to guess the rest.
const DISPLAY_HEX: usize = 8;

/// A freshly generated key. The plaintext is shown to the operator once and
/// then dropped; only `hash` and `display_prefix` are stored.
#[derive(Debug)]
pub struct NewKey {
    pub plaintext: SecretString,
    pub hash: String,
    pub display_prefix: String,
}

/// Generates a key from the thread-local CSPRNG.
#[must_use]
pub fn generate() -> NewKey {
    generate_with_prefix(KEY_PREFIX)
}

/// Generates an admin token, like a key but with [`ADMIN_TOKEN_PREFIX`].
#[must_use]
pub fn generate_admin_token() -> NewKey {
    generate_with_prefix(ADMIN_TOKEN_PREFIX)
}

fn generate_with_prefix(prefix: &str) -> NewKey {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let plaintext = format!("{prefix}{}", hex::encode(bytes));
    NewKey {
        hash: hash(&plaintext),
        display_prefix: plaintext[..prefix.len() + DISPLAY_HEX].to_owned(),
        plaintext: SecretString::from(plaintext),
    }
}

/// Whether `presented` has the shape of a credential generated with
/// `prefix`: the prefix, then 64 lowercase hex digits. Nothing else can
/// match a stored hash, so anything else is refused without a store query
/// (a flood of junk credentials costs no database work).
#[must_use]
pub fn well_formed(presented: &str, prefix: &str) -> bool {
    presented.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 64 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The stored form of a presented key: lowercase hex SHA-256.
#[must_use]
pub fn hash(plaintext: &str) -> String {
    hex::encode(Sha256::digest(plaintext.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn generated_keys_are_unique_prefixed_and_hash_to_stored_form() {
        let a = generate();
        let b = generate();
        let plain = a.plaintext.expose_secret();
        assert!(plain.starts_with(KEY_PREFIX));
        assert_eq!(plain.len(), KEY_PREFIX.len() + 64);
        assert_ne!(plain, b.plaintext.expose_secret());
        assert_eq!(a.hash, hash(plain));
        assert_eq!(a.hash.len(), 64);
        assert!(plain.starts_with(&a.display_prefix));
    }

    #[test]
    fn only_the_generated_shape_is_well_formed() {
        let key = generate();
        let token = generate_admin_token();
        assert!(well_formed(key.plaintext.expose_secret(), KEY_PREFIX));
        assert!(well_formed(
            token.plaintext.expose_secret(),
            ADMIN_TOKEN_PREFIX
        ));
        assert!(!well_formed(
            key.plaintext.expose_secret(),
            ADMIN_TOKEN_PREFIX
        ));
        assert!(!well_formed(token.plaintext.expose_secret(), KEY_PREFIX));
        let hex = "0123456789abcdef".repeat(4);
        assert!(well_formed(&format!("gw-{hex}"), KEY_PREFIX));
        for bad in [
            String::new(),
            "gw-".to_owned(),
            hex.clone(),
            format!("gw-{}", &hex[1..]),
            format!("gw-{hex}0"),
            format!("gw-{}", hex.to_uppercase()),
            format!("gw-{}g", &hex[1..]),
            format!("gw-{}é", &hex[2..]),
            format!("GW-{hex}"),
        ] {
            assert!(!well_formed(&bad, KEY_PREFIX), "{bad:?}");
        }
    }

    #[test]
    fn debug_output_hides_the_plaintext() {
        let key = generate();
        let debug = format!("{key:?}");
        assert!(!debug.contains(key.plaintext.expose_secret()));
    }

    #[test]
    fn known_hash() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
