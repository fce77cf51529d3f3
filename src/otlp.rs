//! Optional OpenTelemetry span export over OTLP/gRPC (cargo feature `otlp`, off by default).
//!
//! With `CALLGATE_OTLP_ENDPOINT` set (for example `http://otel-collector:4317`), every
//! `tracing` span (one per request) is also sent, in batches, to that collector, under the
//! service name `callgate`. A collector that is down costs dropped spans, never a request.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::registry::LookupSpan;

/// The OTLP exporter could not be built from the endpoint.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint}: {source}")]
pub struct OtlpError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

/// Exports spans to `endpoint` until [`Exporter::shutdown`], which flushes what is queued.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Builds the exporter and the `tracing` layer that feeds it. Needs a Tokio runtime.
    pub fn start<S>(
        endpoint: &str,
        version: &'static str,
    ) -> Result<(Exporter, impl tracing_subscriber::Layer<S>), OtlpError>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|source| OtlpError {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        let resource = Resource::builder()
            .with_service_name("callgate")
            .with_attribute(opentelemetry::KeyValue::new("service.version", version))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("callgate"));
        Ok((Exporter { provider }, layer))
    }

    /// Flushes queued spans and stops exporting.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OTLP exporter did not shut down cleanly");
        }
    }
}
