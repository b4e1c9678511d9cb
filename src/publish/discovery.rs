//! Home Assistant MQTT discovery (docs/mqtt.md#home-assistant): one device per daemon with
//! its label, confidence and heatmap, the source's health, diagnostics from `stats`, an
//! "Explain now" button, and the heatmap interval and live maps as controls.
//!
//! Entity names are chosen so that the entity id Home Assistant makes from the device
//! and entity names equals `default_entity_id`: versions that ignore that key (before
//! 2025.10) arrive at the same ids.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::config::Format;
use super::{Kind, Message, Topics};

/// Where and how discovery is published.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub prefix: String,
    pub format: Format,
    /// The device's link in Home Assistant (`[homeassistant] configuration_url`).
    pub configuration_url: Option<String>,
    /// Diagnostics expire after three stats intervals without a stats message.
    pub stats_interval: Duration,
    /// The longest time between predictions when the policy promises one
    /// (`on_change`, `interval`): label and confidence expire after three.
    pub prediction_interval: Option<Duration>,
    /// `[events]` is on: an event entity for episodes.
    pub events: bool,
    /// `[events] snapshot` is on too: an image entity for the last episode's snapshot.
    pub event_snapshots: bool,
}

/// One entity: its component (Home Assistant platform), object id and config.
struct Entity {
    component: &'static str,
    object: &'static str,
    config: Value,
}

/// The retained discovery config(s) for this device.
pub fn messages(options: &Options, device: &str, topics: &Topics) -> Vec<Message> {
    let node = node_id(device);
    let entities = entities(topics, options);
    let common = json!({
        "device": device_block(device, &node, options.configuration_url.as_deref()),
        "origin": origin_block(),
        "availability_topic": topics.availability(),
    });
    match options.format {
        Format::Device => {
            let components: Map<String, Value> = entities
                .into_iter()
                .map(|e| {
                    let mut config = identify(e.config, e.component, e.object, &node, device);
                    config.insert("platform".into(), json!(e.component));
                    (e.object.to_string(), Value::Object(config))
                })
                .collect();
            let mut root = common;
            root["components"] = Value::Object(components);
            vec![retained(
                device_topic(&options.prefix, &node),
                root.to_string(),
            )]
        }
        Format::Entity => entities
            .into_iter()
            .map(|e| {
                let mut config = identify(e.config, e.component, e.object, &node, device);
                for (k, v) in common.as_object().expect("object") {
                    config.insert(k.clone(), v.clone());
                }
                let topic = entity_topic(&options.prefix, e.component, &node, e.object);
                retained(topic, Value::Object(config).to_string())
            })
            .collect(),
    }
}

/// Empty retained messages on every discovery topic of both formats, which makes Home
/// Assistant delete the device and its entities.
pub fn removal(prefix: &str, device: &str, topics: &Topics) -> Vec<Message> {
    let node = node_id(device);
    let any = Options {
        prefix: prefix.into(),
        format: Format::Device,
        configuration_url: None,
        stats_interval: Duration::ZERO,
        prediction_interval: None,
        events: true,
        event_snapshots: true,
    };
    let per_entity = entities(topics, &any)
        .into_iter()
        .map(|e| entity_topic(prefix, e.component, &node, e.object));
    std::iter::once(device_topic(prefix, &node))
        .chain(per_entity)
        .map(|topic| retained(topic, String::new()))
        .collect()
}

/// Home Assistant's node and object ids allow `[a-zA-Z0-9_-]`.
pub fn node_id(device: &str) -> String {
    let id: String = device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("iscamd_{id}")
}

/// Home Assistant knows a device by [`node_id`] and its entities by [`entity_slug`]: a
/// device id those change may share them with another device's.
pub fn warn_if_renamed(device: &str) {
    let slug = entity_slug(device);
    if node_id(device) != format!("iscamd_{device}") || slug != device {
        tracing::warn!(
            "device id {device:?} is {:?} in Home Assistant's discovery and {slug:?} in its \
             entity ids; a device whose id maps to the same names (e.g. {slug:?}) would \
             take over these entities: give each device an id of lower-case letters, \
             digits and _",
            node_id(device)
        );
    }
}

/// What Home Assistant makes of a name in an entity id: lower case, runs of anything
/// else than letters and digits as one `_`.
pub fn entity_slug(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('_') {
            slug.push('_');
        }
    }
    slug.trim_end_matches('_').to_string()
}

fn device_name(device: &str) -> String {
    format!("iscamd {device}")
}

fn device_topic(prefix: &str, node: &str) -> String {
    format!("{prefix}/device/{node}/config")
}

fn entity_topic(prefix: &str, component: &str, node: &str, object: &str) -> String {
    format!("{prefix}/{component}/{node}/{object}/config")
}

fn retained(topic: String, payload: String) -> Message {
    Message {
        topic,
        payload: payload.into_bytes(),
        qos: 1,
        retain: true,
        kind: Kind::Discovery,
    }
}

/// Adds `unique_id` and `default_entity_id` to an entity's config.
fn identify(
    config: Value,
    component: &str,
    object: &str,
    node: &str,
    device: &str,
) -> Map<String, Value> {
    let Value::Object(mut config) = config else {
        unreachable!("entity configs are objects")
    };
    let name = config["name"].as_str().unwrap_or(object).to_string();
    let slug = entity_slug(&format!("{} {name}", device_name(device)));
    config.insert("unique_id".into(), json!(format!("{node}_{object}")));
    config.insert(
        "default_entity_id".into(),
        json!(format!("{component}.{slug}")),
    );
    config
}

fn device_block(device: &str, node: &str, configuration_url: Option<&str>) -> Value {
    let mut block = json!({
        "identifiers": [node],
        "name": device_name(device),
        "manufacturer": "iscamd",
        "model": "iscamd",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(url) = configuration_url {
        block["configuration_url"] = json!(url);
    }
    block
}

/// No `support_url`: the project has no address of its own to point to yet.
fn origin_block() -> Value {
    json!({
        "name": "iscamd",
        "sw_version": env!("CARGO_PKG_VERSION"),
    })
}

fn entities(topics: &Topics, options: &Options) -> Vec<Entity> {
    let mut all = sensors(topics);
    all.extend(controls(topics));
    all.extend(event_entities(topics, options));
    all.extend(diagnostics(topics));
    let expire = |interval: Duration| json!((3 * interval.as_secs()).max(1));
    for e in &mut all {
        if e.config["state_topic"] == json!(topics.stats()) {
            e.config["entity_category"] = json!("diagnostic");
            if !options.stats_interval.is_zero() {
                e.config["expire_after"] = expire(options.stats_interval);
            }
        }
        if let Some(interval) = options.prediction_interval {
            if e.config["state_topic"] == json!(topics.prediction()) {
                e.config["expire_after"] = expire(interval);
            }
        }
    }
    all
}

/// What the camera sees: the top class, its score, the heatmap and the source's state.
fn sensors(topics: &Topics) -> Vec<Entity> {
    vec![
        Entity {
            component: "sensor",
            object: "label",
            config: json!({
                "name": "Label",
                "state_topic": topics.prediction(),
                "value_template": "{{ value_json.top[0].label }}",
                "icon": "mdi:eye",
            }),
        },
        Entity {
            component: "sensor",
            object: "confidence",
            config: json!({
                "name": "Confidence",
                "state_topic": topics.prediction(),
                "value_template": "{{ (value_json.top[0].score * 100) | round(1) }}",
                "unit_of_measurement": "%",
                "state_class": "measurement",
            }),
        },
        Entity {
            component: "image",
            object: "heatmap",
            config: json!({
                "name": "Heatmap",
                "image_topic": topics.heatmap_image(),
                "content_type": "image/jpeg",
                // Published with each image, so the attributes describe the picture shown.
                "json_attributes_topic": topics.heatmap_info(),
            }),
        },
        Entity {
            component: "binary_sensor",
            object: "source",
            config: json!({
                "name": "Source",
                "device_class": "connectivity",
                "state_topic": topics.stats(),
                // Files and folders report no health: they are up while stats flow.
                "value_template":
                    "{{ 'OFF' if value_json.source is defined and not value_json.source.ok else 'ON' }}",
            }),
        },
    ]
}

/// The controls: explain now, the heatmap interval, live maps.
fn controls(topics: &Topics) -> Vec<Entity> {
    vec![
        Entity {
            component: "button",
            object: "explain",
            config: json!({
                "name": "Explain now",
                "command_topic": topics.command(),
                "payload_press": r#"{"id":"homeassistant","cmd":"explain"}"#,
                "icon": "mdi:image-search",
            }),
        },
        Entity {
            component: "number",
            object: "heatmap_interval",
            config: json!({
                "name": "Heatmap interval",
                "command_topic": topics.command(),
                "command_template":
                    r#"{"id":"homeassistant","cmd":"set","interval":"{{ value | int }}s"}"#,
                "state_topic": topics.settings(),
                "value_template": "{{ value_json.heatmap_interval_s }}",
                // Whole seconds: `set` refuses intervals between 0 (off) and 100 ms.
                "min": 0,
                "max": crate::cam::config::MAX_INTERVAL.as_secs(),
                "step": 1,
                "mode": "box",
                "unit_of_measurement": "s",
                "entity_category": "config",
                "icon": "mdi:timer-outline",
            }),
        },
        Entity {
            component: "switch",
            object: "live",
            config: json!({
                "name": "Live maps",
                "command_topic": topics.command(),
                "payload_on": r#"{"id":"homeassistant","cmd":"set","live":true}"#,
                "payload_off": r#"{"id":"homeassistant","cmd":"set","live":false}"#,
                "state_topic": topics.settings(),
                "value_template": "{{ 'ON' if value_json.live else 'OFF' }}",
                "state_on": "ON",
                "state_off": "OFF",
                "entity_category": "config",
                "icon": "mdi:motion-play-outline",
            }),
        },
    ]
}

/// Episodes, when `[events]` is on, and their snapshots.
fn event_entities(topics: &Topics, options: &Options) -> Vec<Entity> {
    let mut all = Vec::new();
    if options.events {
        all.push(Entity {
            component: "event",
            object: "episode",
            config: json!({
                "name": "Episode",
                "state_topic": topics.event(),
                "event_types": ["new", "update", "end"],
                "value_template": "{{ {'event_type': value_json.type, 'id': value_json.id, \
                    'class': value_json.class.label, 'peak_score': value_json.peak.score, \
                    'start': value_json.start.ts, 'last': value_json.last.ts} | to_json }}",
                "icon": "mdi:timeline-clock-outline",
            }),
        });
    }
    if options.event_snapshots {
        all.push(Entity {
            component: "image",
            object: "episode_snapshot",
            config: json!({
                "name": "Episode snapshot",
                "image_topic": topics.event_snapshot(),
                "content_type": "image/jpeg",
            }),
        });
    }
    all
}

/// Sensors that read the `stats` payload.
fn diagnostics(topics: &Topics) -> Vec<Entity> {
    let sensor = |object, name, template, unit: Option<&str>, extra: Value| {
        let mut config = json!({
            "name": name,
            "state_topic": topics.stats(),
            "value_template": template,
        });
        if let Some(unit) = unit {
            config["unit_of_measurement"] = json!(unit);
        }
        for (k, v) in extra.as_object().expect("object") {
            config[k] = v.clone();
        }
        Entity {
            component: "sensor",
            object,
            config,
        }
    };
    let measurement = json!({"state_class": "measurement"});
    let duration = json!({"state_class": "measurement", "device_class": "duration"});
    vec![
        sensor(
            "fps",
            "Frame rate",
            "{{ value_json.fps | round(2) }}",
            Some("fps"),
            measurement,
        ),
        sensor(
            "inference_latency",
            "Inference latency",
            "{{ value_json.latency_ms.inference_mean | round(1) }}",
            Some("ms"),
            duration.clone(),
        ),
        sensor(
            "heatmap_latency",
            "Heatmap latency",
            "{{ value_json.latency_ms.heatmap_last | round(1) }}",
            Some("ms"),
            duration,
        ),
        sensor(
            "dropped_frames",
            "Dropped frames",
            "{{ value_json.frames_dropped }}",
            None,
            json!({"state_class": "total_increasing", "icon": "mdi:image-off"}),
        ),
        // `None` (unknown) until the first measure ([cam] health_every).
        sensor(
            "explanation_faithfulness",
            "Explanation faithfulness",
            "{{ value_json.faithfulness.window_mean | round(3) \
             if value_json.faithfulness is defined \
             and value_json.faithfulness.window_mean is not none else None }}",
            None,
            json!({"state_class": "measurement", "icon": "mdi:map-search"}),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(format: Format) -> Options {
        Options {
            prefix: "homeassistant".into(),
            format,
            configuration_url: Some("http://cam7.local:3000/d/iscamd".into()),
            stats_interval: Duration::from_secs(30),
            prediction_interval: Some(Duration::from_secs(10)),
            events: true,
            event_snapshots: true,
        }
    }

    #[test]
    fn device_format_is_one_config_with_every_component() {
        let topics = Topics::new("iscamd", "Cam.7");
        let m = messages(&options(Format::Device), "Cam.7", &topics);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].topic, "homeassistant/device/iscamd_Cam_7/config");
        assert!(m[0].retain);
        let root: Value = serde_json::from_slice(&m[0].payload).unwrap();
        assert_eq!(root["origin"]["name"], "iscamd");
        assert_eq!(root["availability_topic"], "iscamd/Cam.7/availability");
        let url = &root["device"]["configuration_url"];
        assert_eq!(url, "http://cam7.local:3000/d/iscamd");
        let c = root["components"].as_object().unwrap();
        assert_eq!(c.len(), 14);
        assert_eq!(c["label"]["platform"], "sensor");
        assert_eq!(
            c["episode"]["default_entity_id"],
            "event.iscamd_cam_7_episode"
        );
        assert_eq!(c["episode"]["event_types"], json!(["new", "update", "end"]));
        assert_eq!(c["label"]["default_entity_id"], "sensor.iscamd_cam_7_label");
        assert_eq!(c["label"]["unique_id"], "iscamd_Cam_7_label");
        assert_eq!(
            c["explain"]["default_entity_id"],
            "button.iscamd_cam_7_explain_now"
        );
        assert_eq!(c["fps"]["entity_category"], "diagnostic");
        assert_eq!(c["fps"]["expire_after"], 90);
        assert_eq!(c["confidence"]["expire_after"], 30);
        assert!(c["label"].get("entity_category").is_none());
        assert!(c.values().all(|v| v.get("object_id").is_none()));
    }

    #[test]
    fn entity_format_repeats_device_and_origin_in_each() {
        let topics = Topics::new("iscamd", "cam7");
        let m = messages(&options(Format::Entity), "cam7", &topics);
        assert_eq!(m.len(), 14);
        assert!(m
            .iter()
            .any(|m| m.topic == "homeassistant/image/iscamd_cam7/heatmap/config"));
        for message in &m {
            let config: Value = serde_json::from_slice(&message.payload).unwrap();
            assert_eq!(config["device"]["identifiers"][0], "iscamd_cam7");
            assert_eq!(config["origin"]["name"], "iscamd");
            assert!(config.get("platform").is_none());
        }
    }

    #[test]
    fn event_entities_follow_the_events_config() {
        let topics = Topics::new("iscamd", "cam7");
        let objects = |events, event_snapshots| {
            let s = Options {
                events,
                event_snapshots,
                ..options(Format::Entity)
            };
            let m = messages(&s, "cam7", &topics);
            let has = |object: &str| m.iter().any(|m| m.topic.contains(&format!("/{object}/")));
            (has("episode"), has("episode_snapshot"))
        };
        assert_eq!(objects(true, true), (true, true));
        assert_eq!(objects(true, false), (true, false));
        assert_eq!(objects(false, false), (false, false));
    }

    #[test]
    fn removal_empties_both_formats() {
        let topics = Topics::new("iscamd", "cam7");
        let removal = removal("ha", "cam7", &topics);
        assert_eq!(removal.len(), 15);
        assert!(removal.iter().all(|m| m.payload.is_empty() && m.retain));
        assert_eq!(removal[0].topic, "ha/device/iscamd_cam7/config");
    }

    #[test]
    fn slugs_follow_home_assistant() {
        assert_eq!(entity_slug("iscamd Cam-7.a  Label"), "iscamd_cam_7_a_label");
        assert_eq!(
            entity_slug("iscamd cam7 Explain now"),
            "iscamd_cam7_explain_now"
        );
    }
}
