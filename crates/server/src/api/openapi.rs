//! The OpenAPI document, generated from the handlers and types themselves.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, RefOr, Response};
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
    modifiers(&BearerAuth, &CommonResponses)
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

/// The answers every operation can give beside its own, added to each so
/// that the document lists every status a client can get (Schemathesis,
/// `tests/schema.rs`, checks that it does): with a key, 401 without a
/// valid one, 429 over its rate and 503 while the store or queue is away;
/// with a job id in the path, 400 for one that is no id. Problem bodies
/// are `application/problem+json`, as `Problem` sends them.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        for item in api.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                add_common(op);
            }
        }
    }
}

fn add_common(op: &mut Operation) {
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let mut path_param = false;
    for p in op.parameters.iter_mut().flatten() {
        if p.parameter_in == ParameterIn::Path {
            path_param = true;
            if p.name == "id" {
                // Documented as what it is, so that generated clients (and
                // Schemathesis) send ids, not just any string.
                let uuid = ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)));
                p.schema = Some(RefOr::T(Schema::Object(uuid.build())));
            }
        }
    }
    let mut common = Vec::new();
    if path_param {
        common.push(("400", "the id in the path is not a job id"));
    }
    if secured {
        common.push(("401", "no API key, or an unknown one"));
        common.push(("429", "over the key's rate or queue limit; see Retry-After"));
        common.push((
            "503",
            "the store or queue is unavailable, or the server is shutting down; nothing was done",
        ));
    }
    let responses = &mut op.responses.responses;
    for (status, why) in common {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(problem_response(why)));
    }
    for r in responses.values_mut() {
        if let RefOr::T(r) = r {
            let json = r.content.get("application/json");
            let is_problem = json.and_then(|c| c.schema.as_ref()).is_some_and(
                |s| matches!(s, RefOr::Ref(r) if r.ref_location.ends_with("/Problem")),
            );
            if is_problem {
                if let Some(c) = r.content.shift_remove("application/json") {
                    r.content.insert(PROBLEM_TYPE.to_owned(), c);
                }
            }
        }
    }
}

const PROBLEM_TYPE: &str = "application/problem+json";

fn problem_response(description: &str) -> Response {
    let mut r = Response::new(description);
    let schema = RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem"));
    r.content
        .insert(PROBLEM_TYPE.to_owned(), Content::new(Some(schema)));
    r
}
