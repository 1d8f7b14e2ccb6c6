//! `/api/v2/status/…`, `/api/v2/stats/img/…`, `/api/v2/stats/text/…` and
//! `/.well-known/serviceinfo`.

use crate::clock::now;
use crate::error::ApiResult;
use crate::extract::HordeQuery;
use crate::state::SharedState;
use axum::extract::{Path, State};
use axum::Json;
use horde_api::status::{
    ActiveModel, Heartbeat, HordePerformance, ImgModelStats, ModelState, SinglePeriodImgStat,
    SinglePeriodTxtStat, StatsImgTotals, StatsTxtTotals, TxtModelStats,
};
use horde_core::activity;
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

/// Whether a model the reference knows (`known`) or not belongs in a listing of `wanted`.
fn listed(known: bool, wanted: ModelState) -> bool {
    match wanted {
        ModelState::All => true,
        ModelState::Known => known,
        ModelState::Custom => !known,
    }
}

/// Whether image `model` belongs in a listing of `wanted`.
fn in_state(state: &SharedState, model: &str, wanted: ModelState) -> bool {
    listed(state.model_reference().is_known(model), wanted)
}

/// Whether text `model` belongs in a listing of `wanted` (by the text model reference).
fn text_in_state(state: &SharedState, model: &str, wanted: ModelState) -> bool {
    listed(state.text_reference().is_known(model), wanted)
}

/// Models served by online workers or wanted by waiting requests, from live data.
#[utoipa::path(get, path = "/api/v2/status/models", tag = "v2",
    params(("type" = Option<String>, Query, description = "`image` (the default) or `text` (interrogation: none here yet)"),
        ("min_count" = Option<i64>, Query), ("max_count" = Option<i64>, Query),
        ("model_state" = Option<ModelState>, Query, description = "known, custom or all (the default)")),
    responses((status = 200, body = Vec<ActiveModel>)))]
pub async fn models(
    State(state): State<SharedState>,
    HordeQuery(q): HordeQuery<ModelsQuery>,
) -> Json<Vec<ActiveModel>> {
    let wanted = q.model_state.unwrap_or(ModelState::All);
    let (models, text) = match q.kind.as_deref() {
        None | Some("") | Some("image") => (active_models(&state), false),
        Some("text") => (active_text_models(&state), true),
        Some(_) => return Json(vec![]),
    };
    let list = models
        .into_values()
        .filter(|m| {
            q.min_count.is_none_or(|min| i64::from(m.count) >= min)
                && q.max_count.is_none_or(|max| i64::from(m.count) <= max)
                && match text {
                    true => text_in_state(&state, &m.name, wanted),
                    false => in_state(&state, &m.name, wanted),
                }
        })
        .collect();
    Json(list)
}

#[utoipa::path(get, path = "/api/v2/status/models/{name}", tag = "v2", params(("name" = String, Path)), responses((status = 200, body = Vec<ActiveModel>)))]
pub async fn model(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Json<Vec<ActiveModel>> {
    let found = active_models(&state)
        .remove(&name)
        .or_else(|| active_text_models(&state).remove(&name));
    Json(found.into_iter().collect())
}

/// The text models in use now (see `horde_core::text::activity::active_models`).
pub(crate) fn active_text_models(state: &SharedState) -> BTreeMap<String, ActiveModel> {
    let now = now();
    let online: Vec<horde_core::Worker> = state.workers.read(|registry| {
        registry
            .online_text(now)
            .map(|e| e.worker.clone())
            .collect()
    });
    let speeds = state.workers.text_speeds(|speeds| speeds.averages(now));
    state
        .live_text
        .read(|queue| horde_core::text::activity::active_models(&online, queue.requests(), &speeds))
}

/// The models in use now (see `horde_core::activity::active_models`).
pub(crate) fn active_models(state: &SharedState) -> BTreeMap<String, ActiveModel> {
    let now = now();
    let online: Vec<horde_core::Worker> = state.workers.read(|registry| {
        registry
            .online_image(now)
            .map(|e| e.worker.clone())
            .collect()
    });
    let speeds = state.workers.speeds(|speeds| speeds.averages(now));
    state
        .live
        .read(|queue| activity::active_models(&online, queue.requests(), &speeds))
}

#[utoipa::path(get, path = "/api/v2/status/performance", tag = "v2", responses((status = 200, body = HordePerformance)))]
pub async fn performance(State(state): State<SharedState>) -> Json<HordePerformance> {
    let now = now();
    let (worker_count, thread_count) = state.workers.read(|registry| {
        registry.online_image(now).fold((0u64, 0u64), |(w, t), e| {
            (w + 1, t + u64::from(e.worker.threads))
        })
    });
    let (text_worker_count, text_thread_count) = state.workers.read(|registry| {
        registry.online_text(now).fold((0u64, 0u64), |(w, t), e| {
            (w + 1, t + u64::from(e.worker.threads))
        })
    });
    let queued = state
        .live
        .read(|queue| activity::queued_work(queue.requests()));
    let (queued_text_requests, queued_tokens) = state.live_text.read(|queue| {
        queue
            .requests()
            .filter(|r| r.n_remaining > 0)
            .fold((0u64, 0.0), |(n, tokens), r| {
                let waiting =
                    <horde_core::text::Text as horde_core::JobKind>::work(&r.body, r.n_remaining);
                (n + 1, tokens + waiting)
            })
    });
    let (interrogator_count, interrogator_thread_count) = state.workers.read(|registry| {
        registry
            .online_alchemists(now)
            .fold((0u64, 0u64), |(w, t), e| {
                (w + 1, t + u64::from(e.worker.threads))
            })
    });
    let queued_forms = state.live_alchemy.read(|queue| {
        queue
            .requests()
            .map(|r| f64::from(r.n_remaining))
            .sum::<f64>()
    });
    Json(HordePerformance {
        queued_requests: queued.images,
        interrogator_count,
        interrogator_thread_count,
        queued_forms,
        worker_count,
        thread_count,
        queued_megapixelsteps: queued.megapixelsteps,
        queued_text_requests,
        text_worker_count,
        text_thread_count,
        queued_tokens,
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

/// The public periods' figures (minute, hour, day, month, total) of `totals`, each made into
/// the endpoint's type by `single`; a period missing is the default.
fn periods<T: Copy + Default, S>(totals: &[(&str, T)], single: impl Fn(T) -> S) -> [S; 5] {
    ["minute", "hour", "day", "month", "total"].map(|name| {
        let t = totals
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .unwrap_or_default();
        single(t)
    })
}

/// Images and pixelsteps finished in the last minute, hour, day, month and in total.
#[utoipa::path(get, path = "/api/v2/stats/img/totals", tag = "v2", responses((status = 200, body = StatsImgTotals)))]
pub async fn image_totals(State(state): State<SharedState>) -> ApiResult<Json<StatsImgTotals>> {
    let totals = state.store.image_totals(now()).await?;
    let [minute, hour, day, month, total] = periods(&totals, |t| SinglePeriodImgStat {
        images: t.images,
        ps: t.pixelsteps.round() as u64,
    });
    Ok(Json(StatsImgTotals {
        minute,
        hour,
        day,
        month,
        total,
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
    let counts = state.store.image_counts_by_model(now()).await?;
    Ok(Json(model_stats(counts, |model| {
        in_state(&state, model, wanted)
    })))
}

/// The day's, month's and all time's counts per model (`counts`, by period), of the models
/// `keep` keeps.
fn model_stats(
    counts: Vec<(&str, BTreeMap<String, u64>)>,
    keep: impl Fn(&str) -> bool,
) -> ImgModelStats {
    let mut stats = ImgModelStats::default();
    for (period, counts) in counts {
        let counts = counts
            .into_iter()
            .filter(|(model, _)| keep(model))
            .collect();
        match period {
            "day" => stats.day = counts,
            "month" => stats.month = counts,
            _ => stats.total = counts,
        }
    }
    stats
}

/// Texts and tokens delivered in the last minute, hour, day, month and in total.
#[utoipa::path(get, path = "/api/v2/stats/text/totals", tag = "v2", responses((status = 200, body = StatsTxtTotals)))]
pub async fn text_totals(State(state): State<SharedState>) -> ApiResult<Json<StatsTxtTotals>> {
    let totals = state.store.text_totals(now()).await?;
    let [minute, hour, day, month, total] = periods(&totals, |t| SinglePeriodTxtStat {
        requests: t.requests,
        tokens: t.tokens.round() as u64,
    });
    Ok(Json(StatsTxtTotals {
        minute,
        hour,
        day,
        month,
        total,
    }))
}

/// Texts delivered per model in the last day, month and in total (`model_state`: known by
/// default, custom or all, by the text model reference).
#[utoipa::path(get, path = "/api/v2/stats/text/models", tag = "v2", params(("model_state" = Option<ModelState>, Query, description = "known (the default), custom or all")), responses((status = 200, body = TxtModelStats)))]
pub async fn text_models(
    State(state): State<SharedState>,
    HordeQuery(q): HordeQuery<StatsModelsQuery>,
) -> ApiResult<Json<TxtModelStats>> {
    let wanted = q.model_state.unwrap_or(ModelState::Known);
    let counts = state.store.text_counts_by_model(now()).await?;
    Ok(Json(model_stats(counts, |model| {
        text_in_state(&state, model, wanted)
    })))
}
