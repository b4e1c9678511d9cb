//! Commands received on `<prefix>/<device>/cmd`: parsed, validated and bounded before
//! anything acts on them, so that no payload can stall or crash the device.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::cam::{spec, Budget, CamParams, Weighting};

/// Largest command payload accepted.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
use crate::cam::config::{MAX_INTERVAL, MIN_INTERVAL};

/// A validated command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Explain the next frame with these parameters (and class, default top-1).
    Explain {
        params: CamParams,
        class: Option<usize>,
    },
    /// Publish availability and discovery again.
    Republish,
    /// Change the heatmap schedule (zero turns it off), turn live maps on or off, or both.
    Set {
        interval: Option<Duration>,
        live: Option<bool>,
    },
    /// Read the config file and the model again (as SIGHUP does).
    Reload,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainFields {
    method: Option<String>,
    steps: Option<usize>,
    channels: Option<usize>,
    weighting: Option<String>,
    class: Option<usize>,
    seed: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFields {
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    live: Option<bool>,
}

/// Why a command is refused: the `error` of its `cmd/result`, with its causes
/// ([`crate::error::with_causes`]).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("command payload is {0} bytes; at most {MAX_COMMAND_BYTES} are accepted")]
    TooLarge(usize),
    #[error("invalid JSON")]
    Json(#[source] serde_json::Error),
    /// Valid JSON that is no command object, or one with a key given twice.
    #[error(transparent)]
    NotACommand(serde_json::Error),
    #[error("\"id\" must be a string of 1 to {MAX_ID_CHARS} characters or a number")]
    Id,
    #[error("\"cmd\" must be a string")]
    CmdNotAString,
    #[error("missing \"cmd\" (explain, republish, reload or set)")]
    MissingCmd,
    #[error("unknown command {0:?} (expected explain, republish, reload or set)")]
    Unknown(String),
    #[error("{0} takes no fields")]
    TakesNoFields(String),
    /// A field the command does not have, or of the wrong type.
    #[error("{cmd}")]
    Fields {
        cmd: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A map the device cannot or will not make.
    #[error("explain")]
    Explain(#[source] crate::Error),
    #[error("explain: class {class} does not exist (0..{last})")]
    NoSuchClass { class: usize, last: usize },
    #[error("set: expected \"interval\", \"live\" or both")]
    SetNothing,
    #[error("set: interval must be 0 (off) or between {MIN_INTERVAL:?} and {MAX_INTERVAL:?}")]
    SetInterval,
    #[error("rate limited: at most {0} command(s) per second")]
    RateLimited(f64),
    #[error("busy: {0}")]
    Busy(String),
    #[error("the daemon is stopping")]
    Stopping,
}

/// What a command may be checked against.
pub struct Limits<'a> {
    pub defaults: &'a CamParams,
    /// What one map may cost.
    pub budget: &'a Budget,
    pub layer_channels: usize,
    pub classes: usize,
    /// The model's input size (bounds `score_size`).
    pub input_size: usize,
}

/// Parses a command payload. Returns the command's `id` (when one could be read) with
/// the command or a message naming what is wrong.
pub fn parse(payload: &[u8], limits: &Limits) -> (Option<String>, Result<Command, CommandError>) {
    if payload.len() > MAX_COMMAND_BYTES {
        return (None, Err(CommandError::TooLarge(payload.len())));
    }
    let mut object = match top_level_fields(payload) {
        Ok(fields) => fields,
        Err(e) => return (None, Err(e)),
    };
    let id = match object.remove("id").map(|raw| id_of(&raw)) {
        None => None,
        Some(Ok(id)) => id,
        Some(Err(e)) => return (None, Err(e)),
    };
    let mut object: serde_json::Map<String, Value> = match object
        .into_iter()
        .map(|(k, raw)| serde_json::from_str(raw.get()).map(|v| (k, v)))
        .collect()
    {
        Ok(map) => map,
        Err(e) => return (id, Err(CommandError::Json(e))),
    };
    let cmd = match object.remove("cmd") {
        Some(Value::String(s)) => s,
        Some(_) => return (id, Err(CommandError::CmdNotAString)),
        None => return (id, Err(CommandError::MissingCmd)),
    };
    let value = Value::Object(object);
    let result = match cmd.as_str() {
        "explain" => serde_json::from_value::<ExplainFields>(value)
            .map_err(|source| CommandError::Fields {
                cmd: "explain",
                source,
            })
            .and_then(|f| explain(f, limits)),
        "republish" | "reload" if !object_is_empty(&value) => Err(CommandError::TakesNoFields(cmd)),
        "republish" => Ok(Command::Republish),
        "reload" => Ok(Command::Reload),
        "set" => serde_json::from_value::<SetFields>(value)
            .map_err(|source| CommandError::Fields { cmd: "set", source })
            .and_then(set),
        _ => Err(CommandError::Unknown(cmd)),
    };
    (id, result)
}

fn set(f: SetFields) -> Result<Command, CommandError> {
    if f.interval.is_none() && f.live.is_none() {
        return Err(CommandError::SetNothing);
    }
    if let Some(i) = f.interval {
        if !(i.is_zero() || (MIN_INTERVAL..=MAX_INTERVAL).contains(&i)) {
            return Err(CommandError::SetInterval);
        }
    }
    Ok(Command::Set {
        interval: f.interval,
        live: f.live,
    })
}

/// Most characters of a command's `id`.
const MAX_ID_CHARS: usize = 128;

/// A command's top-level fields as their JSON text; a key given twice is refused (a
/// reader that kept the first and one that kept the last would run different commands).
fn top_level_fields(payload: &[u8]) -> Result<BTreeMap<String, Box<RawValue>>, CommandError> {
    match serde_json::from_slice::<Fields>(payload) {
        Ok(Fields(map)) => Ok(map),
        Err(e) if e.is_data() => Err(CommandError::NotACommand(e)),
        Err(e) => Err(CommandError::Json(e)),
    }
}

/// What [`top_level_fields`] deserialises, refusing duplicate keys.
struct Fields(BTreeMap<String, Box<RawValue>>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a command: a JSON object like {\"cmd\":\"explain\"}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Fields, A::Error> {
                let mut fields = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    if fields.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!(
                            "the key {key:?} is given twice"
                        )));
                    }
                    fields.insert(key, value);
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// The `id` as given: a string's text, or a number's JSON text digit for digit (a float
/// would round a long numeric id).
fn id_of(raw: &RawValue) -> Result<Option<String>, CommandError> {
    let text = raw.get();
    let id = match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text).map_err(CommandError::NotACommand)?,
        Some(b'-' | b'0'..=b'9') => text.to_string(),
        _ if text == "null" => return Ok(None),
        _ => String::new(),
    };
    if id.is_empty() || id.chars().count() > MAX_ID_CHARS {
        return Err(CommandError::Id);
    }
    Ok(Some(id))
}

fn object_is_empty(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.is_empty())
}

fn explain(f: ExplainFields, limits: &Limits) -> Result<Command, CommandError> {
    let defaults = limits.defaults;
    // Without a method, the configured map; with one, a spec read as everywhere else.
    let method = match f.method.as_deref() {
        None => defaults.clone(),
        Some(method) => spec::parse(method).map_err(CommandError::Explain)?,
    };
    let overrides = spec::Overrides {
        steps: f.steps,
        channels: f.channels,
        ..spec::Overrides::default()
    };
    let mut params = method
        .overridden(overrides)
        .map_err(CommandError::Explain)?;
    params.weighting = match f.weighting {
        Some(w) => w.parse::<Weighting>().map_err(CommandError::Explain)?,
        None => defaults.weighting,
    };
    params.batch = defaults.batch;
    params.seed = f.seed.unwrap_or(defaults.seed);
    // The device's scoring resolution holds for requested maps too, unless a spec sets one.
    params.score_size = params.score_size.or(defaults.score_size);
    params
        .validate(limits.layer_channels, limits.input_size)
        .map_err(CommandError::Explain)?;
    limits
        .budget
        .admit(&params, limits.layer_channels)
        .map_err(CommandError::Explain)?;
    if let Some(class) = f.class.filter(|&c| c >= limits.classes) {
        return Err(CommandError::NoSuchClass {
            class,
            last: limits.classes - 1,
        });
    }
    Ok(Command::Explain {
        params,
        class: f.class,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cam::Method;

    fn parse_str(s: &str) -> (Option<String>, Result<Command, String>) {
        let defaults = CamParams::new("iscam", None, None).unwrap();
        let (id, parsed) = parse(
            s.as_bytes(),
            &Limits {
                defaults: &defaults,
                budget: &Budget::default(),
                layer_channels: 512,
                classes: 1000,
                input_size: 227,
            },
        );
        (id, parsed.map_err(|e| crate::error::with_causes(&e)))
    }

    #[test]
    fn explain_takes_defaults_and_overrides() {
        let (id, cmd) =
            parse_str(r#"{"id":"7","cmd":"explain","method":"iscam","steps":2,"channels":16}"#);
        assert_eq!(id.as_deref(), Some("7"));
        let Command::Explain { params, class } = cmd.unwrap() else {
            panic!()
        };
        assert_eq!((params.steps(), params.channels, class), (2, 16, None));
        let (_, cmd) = parse_str(r#"{"cmd":"explain","method":"scorecam","class":3}"#);
        let Command::Explain { params, class } = cmd.unwrap() else {
            panic!()
        };
        assert_eq!(
            (params.method, params.channels, class),
            (Method::ScoreCam, 0, Some(3))
        );
    }

    #[test]
    fn explain_takes_method_specs() {
        let (_, cmd) = parse_str(r#"{"cmd":"explain","method":"iscam:n=2,k=128"}"#);
        let Command::Explain { params, .. } = cmd.unwrap() else {
            panic!()
        };
        assert_eq!((params.steps(), params.channels), (2, 128));
        let (_, cmd) = parse_str(r#"{"cmd":"explain","method":"sscam:n=4","channels":8}"#);
        let Command::Explain { params, .. } = cmd.unwrap() else {
            panic!()
        };
        assert_eq!((params.steps(), params.channels), (4, 8));
        let (_, cmd) =
            parse_str(r#"{"cmd":"explain","method":"scorecam:k=8,select=contribution"}"#);
        let Command::Explain { params, .. } = cmd.unwrap() else {
            panic!()
        };
        assert_eq!(params.select, crate::cam::Selection::Contribution);
        let (_, cmd) = parse_str(r#"{"cmd":"explain","method":"cam"}"#);
        let Command::Explain { params, .. } = cmd.unwrap() else {
            panic!()
        };
        assert_eq!(params.method, Method::Cam);
    }

    #[test]
    fn bad_commands_say_what_is_wrong() {
        for (payload, expected) in [
            ("{not json", "invalid JSON"),
            ("[1,2]", "JSON object"),
            (r#"{"cmd":"reboot"}"#, "unknown command \"reboot\""),
            (r#"{"cmd":"explain","steps":0}"#, "steps"),
            (r#"{"cmd":"explain","steps":1000000}"#, "steps"),
            (r#"{"cmd":"explain","channels":600}"#, "600"),
            (
                r#"{"cmd":"explain","method":"cam","channels":8}"#,
                "every channel",
            ),
            (r#"{"cmd":"explain","steps":"four"}"#, "invalid type"),
            (r#"{"cmd":"explain","class":1000}"#, "class 1000"),
            (r#"{"cmd":"explain","colour":"red"}"#, "colour"),
            (r#"{"cmd":"set","interval":"1ms"}"#, "interval"),
            (r#"{"cmd":7}"#, "\"cmd\" must be a string"),
            (r#"{"id":"1"}"#, "missing \"cmd\""),
            (
                r#"{"cmd":"republish","cmd":"explain"}"#,
                "the key \"cmd\" is given twice",
            ),
            (
                r#"{"id":1,"id":2,"cmd":"republish"}"#,
                "the key \"id\" is given twice",
            ),
            (r#"{"id":[1],"cmd":"republish"}"#, "\"id\" must be"),
            (r#"{"id":"","cmd":"republish"}"#, "\"id\" must be"),
            (
                r#"{"cmd":"explain","method":"sscam","steps":1000,"channels":0}"#,
                "needs 512000 masked passes, above the budget of 512",
            ),
            (
                r#"{"cmd":"explain","method":"iscam:n=10,k=0"}"#,
                "cam.max_passes",
            ),
        ] {
            let (_, r) = parse_str(payload);
            let e = r.unwrap_err();
            assert!(e.contains(expected), "{payload}: {e}");
        }
        let big = format!(r#"{{"cmd":"explain","pad":"{}"}}"#, "x".repeat(1 << 20));
        assert!(parse_str(&big).1.unwrap_err().contains("bytes"));
    }

    #[test]
    fn ids_come_back_exactly_as_given() {
        for (payload, id) in [
            (
                r#"{"id":123456789012345678901234567890,"cmd":"republish"}"#,
                "123456789012345678901234567890",
            ),
            (r#"{"id":1.50,"cmd":"republish"}"#, "1.50"),
            (r#"{"id":-7e3,"cmd":"republish"}"#, "-7e3"),
            (
                r#"{"id":"caf\u00e9 \"7\"","cmd":"republish"}"#,
                "café \"7\"",
            ),
        ] {
            let (got, cmd) = parse_str(payload);
            assert_eq!(got.as_deref(), Some(id), "{payload}");
            assert_eq!(cmd, Ok(Command::Republish));
        }
        assert_eq!(parse_str(r#"{"id":null,"cmd":"republish"}"#).0, None);
    }

    #[test]
    fn set_changes_the_interval_and_live_maps() {
        let set = |interval, live| Ok(Command::Set { interval, live });
        assert_eq!(
            parse_str(r#"{"cmd":"set","interval":"10s"}"#).1,
            set(Some(Duration::from_secs(10)), None)
        );
        assert_eq!(
            parse_str(r#"{"cmd":"set","interval":"0s"}"#).1,
            set(Some(Duration::ZERO), None)
        );
        assert_eq!(
            parse_str(r#"{"cmd":"set","live":false,"interval":"1m"}"#).1,
            set(Some(Duration::from_secs(60)), Some(false))
        );
        assert_eq!(
            parse_str(r#"{"cmd":"set","live":true}"#).1,
            set(None, Some(true))
        );
        for (bad, says) in [
            (r#"{"cmd":"set"}"#, "expected \"interval\""),
            (r#"{"cmd":"set","live":"yes"}"#, "invalid type"),
            (r#"{"cmd":"set","interval":"50ms"}"#, "between"),
            (r#"{"cmd":"set","fps":3}"#, "unknown field"),
        ] {
            let error = parse_str(bad).1.unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
