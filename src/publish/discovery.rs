//! Home Assistant MQTT discovery: a sensor for the top label, one for its confidence,
//! and an image entity for the heatmap overlay.

use serde_json::json;

use super::{Kind, Message, Topics};

/// Discovery messages (retained) for this device.
pub fn messages(ha_prefix: &str, device: &str, topics: &Topics) -> Vec<Message> {
    let node = sanitize(device);
    let dev = json!({
        "identifiers": [format!("iscamd_{node}")],
        "name": format!("iscamd {device}"),
        "model": "iscamd",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let availability = topics.availability();
    let entities = [
        (
            "sensor",
            "label",
            json!({
                "name": "Top class",
                "state_topic": topics.prediction(),
                "value_template": "{{ value_json.top[0].label }}",
                "icon": "mdi:eye",
            }),
        ),
        (
            "sensor",
            "confidence",
            json!({
                "name": "Confidence",
                "state_topic": topics.prediction(),
                "value_template": "{{ (value_json.top[0].score * 100) | round(1) }}",
                "unit_of_measurement": "%",
                "state_class": "measurement",
            }),
        ),
        (
            "image",
            "heatmap",
            json!({
                "name": "Heatmap",
                "image_topic": topics.heatmap_image(),
                "content_type": "image/jpeg",
            }),
        ),
    ];
    entities
        .into_iter()
        .map(|(component, object, mut config)| {
            let c = config.as_object_mut().expect("object");
            c.insert("unique_id".into(), json!(format!("iscamd_{node}_{object}")));
            c.insert("object_id".into(), json!(format!("iscamd_{node}_{object}")));
            c.insert("availability_topic".into(), json!(availability));
            c.insert("device".into(), dev.clone());
            Message {
                topic: format!("{ha_prefix}/{component}/iscamd_{node}/{object}/config"),
                payload: config.to_string().into_bytes(),
                qos: 1,
                retain: true,
                kind: Kind::Discovery,
            }
        })
        .collect()
}

/// Home Assistant node ids allow `[a-zA-Z0-9_-]`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
