//! The OpenAPI document, generated from the handlers and types themselves.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Ignis", description = "Run untrusted code in throw-away microVMs."),
    paths(
        super::jobs::create,
        super::jobs::get,
        super::jobs::list,
        super::jobs::cancel,
        super::sse::events,
        super::misc::languages,
        super::misc::healthz,
        super::misc::metrics,
    ),
    components(schemas(
        super::problem::Problem,
        super::view::JobView,
        super::view::JobList,
        super::view::JobSummary,
        super::view::ResultView,
        super::view::LanguageView,
        super::view::PoolView,
        super::view::Health,
        super::view::WorkerHealth,
        super::parsed::CreateJob,
        super::parsed::FileBody,
        super::parsed::LimitsBody,
        super::parsed::Encoding,
        crate::job::JobStatus,
        crate::job::Timings,
        ignis_vmm::RunReport,
        ignis_vmm::report::VmReport,
        ignis_vmm::Accel,
        ignis_protocol::Verdict,
    )),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
