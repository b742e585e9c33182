//! OpenTelemetry traces for the gateway and the edge worker: the set-up
//! from the standard `OTEL_*` environment variables, the log and trace
//! subscriber both binaries install, and W3C trace context
//! (`traceparent`, `tracestate`) in and out of HTTP headers.
//!
//! # Switched on by the environment
//!
//! Traces are exported only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and neither
//! `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says
//! otherwise). The exporter speaks OTLP over HTTP/protobuf; it reads the
//! other standard variables itself (`OTEL_EXPORTER_OTLP_HEADERS`,
//! `…_TIMEOUT`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`). A protocol other than
//! `http/protobuf` is refused at start rather than silently exporting
//! nothing.
//!
//! # Why spans have their own target
//!
//! Every span and event meant for a trace is created with
//! `target: otel::TARGET`. The OpenTelemetry layer sees only that target,
//! and the log layer never does. So a log line (which may name a backend's
//! error) never becomes part of a trace, a trace's spans never print as
//! log prefixes, and with traces off those call sites are disabled once,
//! at registration: creating such a span then costs one atomic load, and
//! its fields are never evaluated.
//!
//! # What leaves in a trace
//!
//! Only what the code puts in span fields and attributes: the binaries
//! record names, counts, classes and timings, never a prompt, an answer
//! or a credential. Export runs on the batch processor's own thread with a
//! bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048 spans): when the
//! collector is slow or down, spans are dropped, requests never wait.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Array, StringValue};
use opentelemetry_otlp::{ExporterBuildError, WithExportConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use opentelemetry::trace::Status;
pub use opentelemetry::Value;
pub use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span and event that belongs in a trace.
pub const TARGET: &str = "otel";

/// The W3C trace context and baggage headers. The gateway never lets any
/// of them reach a cloud backend.
pub const CONTEXT_HEADERS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// How long shutdown waits for the last spans to leave.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why traces cannot be switched on as the environment asks.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// A protocol this build does not export (gRPC, JSON).
    #[error(
        "{var}={value:?} is not supported: traces are exported as OTLP over HTTP/protobuf \
         (`http/protobuf`, a collector's port 4318)"
    )]
    Protocol { var: &'static str, value: String },
    #[error("cannot build the OTLP trace exporter: {0}")]
    Exporter(#[from] ExporterBuildError),
}

/// The running trace pipeline. Dropping it without [`Traces::shutdown`]
/// loses the spans not yet exported.
pub struct Traces {
    provider: SdkTracerProvider,
    /// The instrumentation scope's name: the binary's.
    service: &'static str,
}

impl Traces {
    /// The pipeline the environment asks for, or `None` when traces are
    /// off. `service` names the process unless `OTEL_SERVICE_NAME` (or a
    /// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`) does.
    ///
    /// Also makes ring the process's rustls crypto provider, whether or not
    /// traces are on: the exporter's HTTP client (reqwest 0.13, shared with
    /// the edge worker's mistralrs) is built without a provider of its own,
    /// and panics when it meets no process default.
    pub fn from_env(service: &'static str) -> Result<Option<Traces>, TracesError> {
        Self::from_vars(service, |name| std::env::var(name).ok())
    }

    fn from_vars(
        service: &'static str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Traces>, TracesError> {
        // An error only says a provider was installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if !wanted(&var)? {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()?;
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let named = set("OTEL_SERVICE_NAME").is_some()
            || set("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
        let mut resource = Resource::builder();
        if !named {
            resource = resource.with_service_name(service);
        }
        let resource = resource
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Some(Traces { provider, service }))
    }

    /// The layer that turns [`TARGET`] spans into OpenTelemetry spans.
    fn layer(&self) -> Box<dyn Layer<Registry> + Send + Sync> {
        let tracer = self.provider.tracer(self.service);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target(TARGET, LevelFilter::TRACE))
            .boxed()
    }

    /// Exports what is still queued (waiting at most a few seconds) and
    /// stops the exporter's thread. Blocks: call it outside async code, or
    /// in `spawn_blocking`.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "traces not flushed at shutdown");
        }
    }
}

/// Whether the variables ask for traces: an OTLP endpoint is set and the
/// SDK or trace export is not switched off. A protocol this build cannot
/// speak is an error.
fn wanted(var: &impl Fn(&str) -> Option<String>) -> Result<bool, TracesError> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .is_some();
    let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    if !endpoint || disabled {
        return Ok(false);
    }
    // The signal's own variable wins over the general one.
    let protocol = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|name| set(name).map(|value| (name, value)));
    match protocol {
        Some((var, value)) if value.trim() != "http/protobuf" => {
            Err(TracesError::Protocol { var, value })
        }
        _ => Ok(true),
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the process's subscriber: logs to stderr filtered by `logs`
/// (to which [`TARGET`] is always off), and, when `traces` is given, the
/// OpenTelemetry layer for [`TARGET`]. A second call does nothing.
pub fn install(logs: EnvFilter, format: LogFormat, traces: Option<&Traces>) {
    let logs = match format!("{TARGET}=off").parse() {
        Ok(directive) => logs.add_directive(directive),
        Err(_) => logs,
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().with_filter(logs).boxed(),
        LogFormat::Text => fmt.with_filter(logs).boxed(),
    };
    // Without traces the OpenTelemetry layer is left out entirely (not
    // installed as an empty `Option`), so [`TARGET`] call sites are
    // disabled for good.
    let mut layers = vec![fmt];
    if let Some(traces) = traces {
        layers.push(traces.layer());
    }
    let _ = tracing_subscriber::registry().with(layers).try_init();
}

/// Records a server span's HTTP status; a 5xx marks the span failed.
pub fn answered(request: &Span, status: u16) {
    if request.is_disabled() {
        return;
    }
    request.set_attribute("http.response.status_code", i64::from(status));
    if status >= 500 {
        request.set_attribute("error.type", status.to_string());
        request.set_status(Status::error(""));
    }
}

/// The parent a request names in its `traceparent` (and `tracestate`),
/// given to `span` before it starts. Nothing happens when traces are off,
/// the span is disabled, or the header is missing or malformed; baggage is
/// never read.
pub fn continue_trace(span: &Span, headers: &HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Writes `span`'s context as `traceparent` (and `tracestate`) into
/// `headers`; nothing when traces are off. An unsampled span still
/// propagates (with its sampled flag off), as W3C Trace Context asks.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// Removes every trace context and baggage header from `headers`.
pub fn strip(headers: &mut HeaderMap) {
    for name in CONTEXT_HEADERS {
        headers.remove(name);
    }
}

/// A string array attribute value.
pub fn strings(items: impl IntoIterator<Item = String>) -> Value {
    Value::Array(Array::String(
        items.into_iter().map(StringValue::from).collect(),
    ))
}

/// A float array attribute value.
pub fn floats(items: impl IntoIterator<Item = f64>) -> Value {
    Value::Array(Array::F64(items.into_iter().collect()))
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn only_an_endpoint_switches_traces_on() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], false),
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")], false),
            (&[("OTEL_SERVICE_NAME", "gw")], false),
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")], true),
            (
                &[(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces",
                )],
                true,
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_SDK_DISABLED", "true"),
                ],
                false,
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_TRACES_EXPORTER", "none"),
                ],
                false,
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ],
                true,
            ),
        ];
        for (pairs, on) in cases {
            assert_eq!(wanted(&vars(pairs)).ok(), Some(*on), "{pairs:?}");
        }
    }

    #[test]
    fn the_exporter_builds_its_tls_client() {
        // The exporter's client is built with rustls whatever the
        // endpoint's scheme; with no crypto provider in the process, that
        // panics.
        let traces = Traces::from_vars(
            "test",
            vars(&[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://collector.invalid:4318",
            )]),
        );
        let traces = traces.ok().flatten();
        assert!(traces.is_some());
        if let Some(t) = traces {
            t.shutdown();
        }
    }

    #[test]
    fn protocols_this_build_cannot_speak_are_refused() {
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ] {
            let got = wanted(&vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                (var, value),
            ]));
            assert!(
                matches!(got, Err(TracesError::Protocol { var: v, .. }) if v == var),
                "{var}={value}: {got:?}"
            );
        }
        // The traces variable wins over the general one.
        let got = wanted(&vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ]));
        assert_eq!(got.ok(), Some(true));
    }

    #[test]
    fn trace_context_headers_round_trip_and_strip() {
        let mut headers = HeaderMap::new();
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        headers.insert("traceparent", HeaderValue::from_static(parent));
        headers.insert("tracestate", HeaderValue::from_static("vendor=x"));
        headers.insert("baggage", HeaderValue::from_static("user=y"));
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        assert!(cx.span().span_context().is_valid());
        let mut out = HeaderMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(
            out.get("traceparent").map(HeaderValue::as_bytes),
            Some(parent.as_bytes())
        );
        assert!(out.get("baggage").is_none(), "baggage is never propagated");
        strip(&mut headers);
        assert!(headers.is_empty());
    }
}
