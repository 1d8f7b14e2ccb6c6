//! `/api/v2/status/…`, `/api/v2/stats/img/…` and `/.well-known/serviceinfo`.

use crate::error::ApiResult;
use crate::extract::HordeQuery;
use crate::state::{now, SharedState};
use axum::extract::{Path, State};
use axum::Json;
use horde_api::status::{
    ActiveModel, Heartbeat, HordePerformance, ImgModelStats, ModelState, SinglePeriodImgStat,
    StatsImgTotals,
};
use serde::Deserialize;
use std::collections::BTreeMap;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[utoipa::path(get, path = "/api/v2/status/heartbeat", tag = "v2", responses((status = 200, body = Heartbeat)))]
pub async fn heartbeat() -> Json<Heartbeat> {
    Json(Heartbeat {
        message: "OK".into(),
        version: VERSION.into(),
    })
}

#[derive(Deserialize)]
pub struct ModelsQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    min_count: Option<i64>,
    max_count: Option<i64>,
    model_state: Option<ModelState>,
}

/// The query of `/stats/img/models`.
#[derive(Deserialize)]
pub struct StatsModelsQuery {
    model_state: Option<ModelState>,
}

/// Whether `model` belongs in a listing of `state`.
fn in_state(state: &SharedState, model: &str, wanted: ModelState) -> bool {
    match wanted {
        ModelState::All => true,
        ModelState::Known => state.registry().is_known(model),
        ModelState::Custom => !state.registry().is_known(model),
    }
}

/// Models served by online workers or wanted by waiting requests, from live data.
#[utoipa::path(get, path = "/api/v2/status/models", tag = "v2",
    params(("type" = Option<String>, Query, description = "`image` (text and interrogation models: none here yet)"),
        ("min_count" = Option<i64>, Query), ("max_count" = Option<i64>, Query),
        ("model_state" = Option<ModelState>, Query, description = "known, custom or all (the default)")),
    responses((status = 200, body = Vec<ActiveModel>)))]
pub async fn models(
    State(state): State<SharedState>,
    HordeQuery(q): HordeQuery<ModelsQuery>,
) -> Json<Vec<ActiveModel>> {
    if q.kind.as_deref().is_some_and(|k| k != "image") {
        return Json(vec![]);
    }
    let list = active_models(&state)
        .into_values()
        .filter(|m| {
            q.min_count.is_none_or(|min| i64::from(m.count) >= min)
                && q.max_count.is_none_or(|max| i64::from(m.count) <= max)
                && in_state(&state, &m.name, q.model_state.unwrap_or(ModelState::All))
        })
        .collect();
    Json(list)
}

#[utoipa::path(get, path = "/api/v2/status/models/{name}", tag = "v2", params(("name" = String, Path)), responses((status = 200, body = Vec<ActiveModel>)))]
pub async fn model(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Json<Vec<ActiveModel>> {
    Json(active_models(&state).remove(&name).into_iter().collect())
}

pub(crate) fn active_models(state: &SharedState) -> BTreeMap<String, ActiveModel> {
    let now = now();
    let mut models: BTreeMap<String, ActiveModel> = BTreeMap::new();
    for w in state
        .workers
        .read()
        .expect("registry lock")
        .online(now)
        .filter(|w| !w.worker.maintenance)
    {
        for m in &w.worker.flags.models {
            model_entry(&mut models, m).count += w.worker.threads;
        }
    }
    for r in state.queue.lock().expect("queue lock").requests() {
        let c = r.counts();
        if c.waiting + c.processing == 0 {
            continue;
        }
        let p = &r.body.params;
        let things = f64::from(p.width) * f64::from(p.height) * f64::from(p.accurate_steps());
        for m in &r.body.models {
            let e = model_entry(&mut models, m);
            e.queued += things * f64::from(c.waiting);
            e.jobs += f64::from(c.waiting + c.processing);
        }
    }
    let perf = state.performance.lock().expect("performance lock");
    for m in models.values_mut() {
        m.performance = perf.average(&m.name, now);
        m.eta = if m.performance > 0.0 && m.count > 0 {
            (m.queued / (f64::from(m.count) * m.performance)) as i64
        } else if m.queued > 0.0 {
            10000
        } else {
            0
        };
    }
    models
}

fn model_entry<'a>(
    models: &'a mut BTreeMap<String, ActiveModel>,
    name: &str,
) -> &'a mut ActiveModel {
    models
        .entry(name.to_string())
        .or_insert_with(|| ActiveModel {
            name: name.to_string(),
            count: 0,
            performance: 0.0,
            queued: 0.0,
            jobs: 0.0,
            eta: 0,
            kind: "image".into(),
        })
}

#[utoipa::path(get, path = "/api/v2/status/performance", tag = "v2", responses((status = 200, body = HordePerformance)))]
pub async fn performance(State(state): State<SharedState>) -> Json<HordePerformance> {
    let now = now();
    let (worker_count, thread_count) = {
        let registry = state.workers.read().expect("registry lock");
        registry.online(now).fold((0u64, 0u64), |(w, t), e| {
            (w + 1, t + u64::from(e.worker.threads))
        })
    };
    let (queued_requests, queued_mps) = {
        let queue = state.queue.lock().expect("queue lock");
        queue.requests().fold((0u64, 0f64), |(n, mps), r| {
            let c = r.counts();
            let things = r.body.params.megapixelsteps_per_image();
            (
                n + u64::from(c.waiting + c.processing),
                mps + things * f64::from(c.waiting),
            )
        })
    };
    Json(HordePerformance {
        queued_requests,
        worker_count,
        thread_count,
        queued_megapixelsteps: queued_mps,
        ..Default::default()
    })
}

/// Software and API description for service discovery.
pub async fn serviceinfo(State(state): State<SharedState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": "1.0",
        "software": {"name": "horde", "version": VERSION, "repository": "", "homepage": ""},
        "api": {"aihorde": {"name": "AI Horde API", "version": "2.5", "base_url": format!("{}/api/", state.public_url), "rel_path": "/api/v2", "documentation": format!("{}/api/", state.public_url)}},
    }))
}

/// Images and pixelsteps finished in the last minute, hour, day, month and in total.
#[utoipa::path(get, path = "/api/v2/stats/img/totals", tag = "v2", responses((status = 200, body = StatsImgTotals)))]
pub async fn image_totals(State(state): State<SharedState>) -> ApiResult<Json<StatsImgTotals>> {
    let totals = state.store.image_totals(now()).await?;
    let period = |name: &str| {
        let t = totals
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .unwrap_or_default();
        SinglePeriodImgStat {
            images: t.images,
            ps: t.pixelsteps.round() as u64,
        }
    };
    Ok(Json(StatsImgTotals {
        minute: period("minute"),
        hour: period("hour"),
        day: period("day"),
        month: period("month"),
        total: period("total"),
    }))
}

/// Images finished per model in the last day, month and in total (`model_state`: known by
/// default, custom or all).
#[utoipa::path(get, path = "/api/v2/stats/img/models", tag = "v2", params(("model_state" = Option<ModelState>, Query, description = "known (the default), custom or all")), responses((status = 200, body = ImgModelStats)))]
pub async fn image_models(
    State(state): State<SharedState>,
    HordeQuery(q): HordeQuery<StatsModelsQuery>,
) -> ApiResult<Json<ImgModelStats>> {
    let wanted = q.model_state.unwrap_or(ModelState::Known);
    let mut stats = ImgModelStats::default();
    for (period, counts) in state.store.image_counts_by_model(now()).await? {
        let counts = counts
            .into_iter()
            .filter(|(model, _)| in_state(&state, model, wanted))
            .collect();
        match period {
            "day" => stats.day = counts,
            "month" => stats.month = counts,
            _ => stats.total = counts,
        }
    }
    Ok(Json(stats))
}
