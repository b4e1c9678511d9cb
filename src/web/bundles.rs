//! Debug bundles and comparisons of the last frame classified (`/api/bundle`,
//! `/api/compare`): [`crate::bundle`] made on a blocking thread, one at a time.

use std::sync::PoisonError;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::server::{error, App};
use crate::bundle;
use crate::cam::CamParams;
use crate::daemon::pipeline::Pipeline;
use crate::error::with_causes;
use crate::publish::command::{self, Command, Limits};

/// `POST /api/bundle` and `/api/compare`: the methods to run on the last frame (1 to 4
/// method specs, read and budgeted as the `explain` command's) and the class (default:
/// the top-1).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Maps {
    methods: Vec<String>,
    class: Option<usize>,
}

/// `GET /api/bundle`: the debug bundle of the last frame with the configured method.
pub(super) async fn configured(State(app): State<App>) -> Response {
    zip_answer(make_bundle(&app, None).await)
}

/// `POST /api/bundle`: the debug bundle of the last frame with the methods asked for.
pub(super) async fn asked(State(app): State<App>, Json(maps): Json<Maps>) -> Response {
    zip_answer(make_bundle(&app, Some(maps)).await)
}

/// `POST /api/compare`: the last frame explained by each method; the maps' images at
/// `/api/compare/I.png`, the whole as `/api/compare/bundle.zip`.
pub(super) async fn compare(State(app): State<App>, Json(maps): Json<Maps>) -> Response {
    let (zip, _) = match make_bundle(&app, Some(maps)).await {
        Ok(made) => made,
        Err(refused) => return refused,
    };
    let manifest: Value = match bundle::file(&zip, "manifest.json") {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    *app.compared.lock().unwrap_or_else(PoisonError::into_inner) = Some(zip);
    let images: Vec<String> = (0..manifest["maps"].as_array().map_or(0, Vec::len))
        .map(|i| format!("/api/compare/{i}.png"))
        .collect();
    Json(json!({
        "schema": "iscamd.web_compare/1",
        "manifest": manifest,
        "images": images,
        "bundle": "/api/compare/bundle.zip",
    }))
    .into_response()
}

pub(super) async fn compared(State(app): State<App>, Path(file): Path<String>) -> Response {
    let Some(zip) = app
        .compared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
    else {
        return error(StatusCode::NOT_FOUND, "no comparison yet");
    };
    if file == "bundle.zip" {
        return zip_answer(Ok((zip, "iscamd-compare.zip".into())));
    }
    let index = file
        .strip_suffix(".png")
        .and_then(|i| i.parse::<usize>().ok());
    let manifest = bundle::file(&zip, "manifest.json")
        .ok()
        .and_then(|m| serde_json::from_slice::<bundle::Manifest>(&m).ok());
    let overlay = match (index, manifest) {
        (Some(i), Some(m)) => m.maps.get(i).map(|map| map.overlay.clone()),
        _ => None,
    };
    match overlay.and_then(|name| bundle::file(&zip, &name).ok()) {
        Some(png) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no {file} in the last comparison"),
        ),
    }
}

fn zip_answer(made: Result<(Vec<u8>, String), Response>) -> Response {
    match made {
        Ok((zip, name)) => {
            let disposition = format!("attachment; filename=\"{name}\"");
            let headers = [
                (header::CONTENT_TYPE, "application/zip".to_string()),
                (header::CONTENT_DISPOSITION, disposition),
            ];
            (headers, zip).into_response()
        }
        Err(refused) => refused,
    }
}

/// The bundle of the last frame classified, and its file name; or the answer why not.
async fn make_bundle(app: &App, maps: Option<Maps>) -> Result<(Vec<u8>, String), Response> {
    let (Some(last), Some(attached)) = (app.board.last_analysed(), app.board.attached()) else {
        return Err(error(StatusCode::NOT_FOUND, "no frame classified yet"));
    };
    let pipeline = last.pipeline.clone();
    let (methods, class) = match maps {
        None => (vec![pipeline.params.clone()], None),
        Some(maps) => methods_asked(&pipeline, maps)
            .map_err(|why| error(StatusCode::UNPROCESSABLE_ENTITY, why))?,
    };
    let Ok(permit) = app.bundles.clone().try_acquire_owned() else {
        let why = "busy: a bundle is being made; try again when it is done";
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, why));
    };
    let device: String = attached
        .origin
        .device
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    let name = format!("iscamd-{device}-frame{}.zip", last.mark.frame);
    let origin = bundle::Origin {
        source: format!("{} frame {}", attached.origin.device, last.mark.frame),
        number: Some(last.mark.frame),
        captured: Some(last.mark.at),
        device: Some(attached.origin.device.clone()),
        run: Some(attached.origin.run.clone()),
        config: app.board.config().map(|c| c.to_string()),
    };
    let made = tokio::task::spawn_blocking(move || {
        let _one_at_a_time = permit;
        let threads = pipeline.heatmap_threads;
        bundle::explain_and_make(
            &pipeline.classifier,
            &last.analysis,
            origin,
            &methods,
            class,
            threads,
        )
    })
    .await;
    match made {
        Ok(Ok(zip)) => Ok((zip, name)),
        Ok(Err(e)) => Err(error(StatusCode::UNPROCESSABLE_ENTITY, with_causes(&e))),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

/// Each method spec read and budgeted as an `explain` command's.
fn methods_asked(
    pipeline: &Pipeline,
    maps: Maps,
) -> Result<(Vec<CamParams>, Option<usize>), String> {
    if maps.methods.is_empty() || maps.methods.len() > bundle::MAX_MAPS {
        return Err(format!("methods: 1 to {} method specs", bundle::MAX_MAPS));
    }
    let budget = pipeline.budget();
    let limits = Limits {
        defaults: &pipeline.params,
        budget: &budget,
        layer_channels: pipeline.classifier.cam_layer().map_or(0, |l| l.channels),
        classes: pipeline.classifier.classes(),
        input_size: pipeline.classifier.input_size(),
    };
    let mut methods = Vec::new();
    for spec in maps.methods {
        let mut explain = json!({ "cmd": "explain", "method": spec });
        if let Some(class) = maps.class {
            explain["class"] = json!(class);
        }
        let payload = serde_json::to_vec(&explain).expect("a command serialises");
        match command::parse(&payload, &limits).1 {
            Ok(Command::Explain { params, .. }) => methods.push(params),
            Ok(_) => unreachable!("an explain command parses as explain"),
            Err(e) => return Err(with_causes(&e)),
        }
    }
    Ok((methods, maps.class))
}
