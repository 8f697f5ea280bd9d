//! Logs (JSON or pretty, to stderr) and, with the `otlp` feature, OpenTelemetry trace
//! export over OTLP/HTTP. `serve` installs the subscriber once its `[telemetry]` config
//! is read (log level, collector endpoint, service name).

mod json;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of the one span log lines carry: each request's (`http/observe.rs`).
pub const REQUEST_SPAN_TARGET: &str = "ferry::http";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

#[cfg(feature = "otlp")]
type Base = tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>;

#[cfg(feature = "otlp")]
type OtelLayer =
    tracing_opentelemetry::OpenTelemetryLayer<Base, opentelemetry_sdk::trace::SdkTracer>;

/// Whether spans are exported (OTLP): only then are a request's outcome fields recorded
/// on its span as well as written in its log line.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the installed subscriber exports spans.
pub fn spans_exported() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Controls the installed subscriber.
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

/// Installs the global subscriber. The filter is `RUST_LOG`, else `[telemetry]
/// log_level`, else `default_level`; with `[telemetry] otlp_endpoint` (and the `otlp`
/// feature) spans are also exported over OTLP/HTTP.
pub fn init(
    format: LogFormat,
    default_level: &str,
    config: Option<&crate::config::TelemetryConfig>,
) -> Result<Telemetry, String> {
    let level = config
        .and_then(|c| c.log_level.as_deref())
        .unwrap_or(default_level);
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .map_err(|e| format!("telemetry.log_level: {e}"))?;
    // Log lines see events and one span, the request's (its id, method and route): the
    // stage spans (exchange, verify, mapping, policy) are for trace export. Formatting
    // every span's fields for the log cost more CPU than a cache hit (BENCHMARKS.md).
    let only_the_request_span = tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_event() || (meta.name() == "request" && meta.target() == REQUEST_SPAN_TARGET)
    });
    let fmt: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(json::JsonLines)
            .fmt_fields(json::JsonMembers)
            .with_writer(std::io::stderr)
            .with_filter(only_the_request_span)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .fmt_fields(escaped_fields())
            // Colours only on a terminal, and not with `NO_COLOR` set (no-color.org): a
            // file or a collector gets plain text.
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .with_writer(std::io::stderr)
            .with_filter(only_the_request_span)
            .boxed(),
    };
    let endpoint = config.and_then(|c| c.otlp_endpoint.as_deref());
    #[cfg(not(feature = "otlp"))]
    if endpoint.is_some() {
        return Err("telemetry.otlp_endpoint: this build has no OTLP export; rebuild with `--features otlp`".into());
    }
    #[cfg(feature = "otlp")]
    let (otel, provider) = match endpoint {
        None => (None, None),
        Some(endpoint) => {
            let service = config
                .and_then(|c| c.service_name.as_deref())
                .unwrap_or("ferry");
            let (layer, provider) = otlp_layer(endpoint, service)?;
            (Some(layer), Some(provider))
        }
    };
    let registry = tracing_subscriber::registry().with(filter);
    #[cfg(feature = "otlp")]
    let registry = registry.with(otel);
    let _ = registry.with(fmt).try_init();
    #[cfg(feature = "otlp")]
    if let Some(endpoint) = endpoint {
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(endpoint, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry {
        #[cfg(feature = "otlp")]
        provider,
    })
}

/// The pretty format's fields with control characters escaped
/// ([`crate::text::escape_control`]): a newline in a value that came from a client (an
/// error description naming a token's `iss`, a mapped subject) cannot start a forged line.
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static
{
    use tracing_subscriber::field::MakeExt as _;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = crate::text::escape_control(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

#[cfg(feature = "otlp")]
fn otlp_layer(
    endpoint: &str,
    service: &str,
) -> Result<(OtelLayer, opentelemetry_sdk::trace::SdkTracerProvider), String> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    Ok((
        tracing_opentelemetry::layer().with_tracer(provider.tracer("ferry")),
        provider,
    ))
}

impl Telemetry {
    /// Flushes exported spans (at shutdown).
    pub fn shutdown(&self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = &self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Makes the incoming W3C `traceparent` the parent of the request span, so exported
/// traces join the caller's trace. A no-op without the `otlp` feature.
pub fn adopt_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    #[cfg(feature = "otlp")]
    if let Some(tp) = traceparent {
        use opentelemetry::propagation::TextMapPropagator as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        struct One<'a>(&'a str);
        impl opentelemetry::propagation::Extractor for One<'_> {
            fn get(&self, key: &str) -> Option<&str> {
                (key == "traceparent").then_some(self.0)
            }
            fn keys(&self) -> Vec<&str> {
                vec!["traceparent"]
            }
        }
        let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&One(tp));
        let _ = span.set_parent(cx);
    }
    #[cfg(not(feature = "otlp"))]
    let _ = (span, traceparent);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    /// A log writer the tests read back.
    #[derive(Clone, Default)]
    pub(crate) struct Buffer(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pretty_lines_escape_control_characters_in_every_field() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(super::escaped_fields())
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let shown = "iss\nFORGED line \u{1b}[2J";
            tracing::info!(description = %shown, debug = ?shown, "message\nFORGED");
        });
        let out = String::from_utf8(buffer.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.contains("description=iss\\nFORGED line \\u{1b}[2J"),
            "{out}"
        );
        assert!(out.contains("message\\nFORGED"), "{out}");
    }
}
