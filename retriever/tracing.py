"""OpenTelemetry for the serving process: a tracer provider exporting over OTLP when
`tracing.otlp_endpoint` is set, nothing otherwise (the API's no-op tracer then costs next to nothing)."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider

from common.settings import TracingSettings


def make_tracer_provider(settings: TracingSettings) -> TracerProvider | None:
    if not settings.otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    endpoint = settings.otlp_endpoint
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://")))
    )
    return provider
