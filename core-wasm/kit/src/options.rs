//! Options declared once: the JSON Schema `describe` publishes, and the parser `run` uses, with
//! the defaults taken from that same schema.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// A strategy's options: names, JSON types, defaults, lower bounds and descriptions.
///
/// ```
/// # use drpo_kit::OptionsSchema;
/// #[derive(Debug, serde::Deserialize)]
/// struct Options { steps: u32, temperature: f64 }
/// let schema = OptionsSchema::new("My search options")
///     .integer("steps", 5, 1, "How many steps to take.")
///     .number("temperature", 0.7, 0.0, "The optimizer's sampling temperature.");
/// let options: Options = schema.parse(r#"{"steps": 2}"#).unwrap();
/// assert_eq!((options.steps, options.temperature), (2, 0.7));
/// assert!(schema.parse::<Options>(r#"{"step": 2}"#).unwrap_err().contains("step"));
/// ```
#[derive(Clone, Debug)]
pub struct OptionsSchema {
    title: String,
    properties: Map<String, Value>,
}

impl OptionsSchema {
    /// An empty schema with a title (shown by `drpo-host describe`).
    pub fn new(title: &str) -> Self {
        OptionsSchema {
            title: title.to_owned(),
            properties: Map::new(),
        }
    }

    fn with(mut self, name: &str, property: Value) -> Self {
        self.properties.insert(name.to_owned(), property);
        self
    }

    /// A non-negative integer option of at least `minimum`.
    pub fn integer(self, name: &str, default: u64, minimum: u64, description: &str) -> Self {
        self.with(
            name,
            json!({"type": "integer", "default": default, "minimum": minimum, "description": description}),
        )
    }

    /// A number option of at least `minimum`.
    pub fn number(self, name: &str, default: f64, minimum: f64, description: &str) -> Self {
        self.with(
            name,
            json!({"type": "number", "default": default, "minimum": minimum, "description": description}),
        )
    }

    /// A boolean option.
    pub fn boolean(self, name: &str, default: bool, description: &str) -> Self {
        self.with(
            name,
            json!({"type": "boolean", "default": default, "description": description}),
        )
    }

    /// A string option.
    pub fn string(self, name: &str, default: &str, description: &str) -> Self {
        self.with(
            name,
            json!({"type": "string", "default": default, "description": description}),
        )
    }

    /// A list option (default empty) whose items are JSON objects: data a strategy takes
    /// through its options, so that the run log's header records it and a replay sees it.
    pub fn array(self, name: &str, description: &str) -> Self {
        self.with(
            name,
            json!({"type": "array", "items": {"type": "object"}, "default": [], "description": description}),
        )
    }

    /// A map option (default empty) from names to JSON objects, such as the published metrics
    /// cache `{query: aspect selection}` that `--metrics-cache-path` fills.
    pub fn object_map(self, name: &str, description: &str) -> Self {
        self.with(
            name,
            json!({"type": "object", "additionalProperties": {"type": "object"}, "default": {}, "description": description}),
        )
    }

    /// The schema as a JSON value (closed: unknown options are refused).
    pub fn to_value(&self) -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": self.title,
            "type": "object",
            "additionalProperties": false,
            "properties": self.properties,
        })
    }

    /// The schema as JSON text, for [`crate::Info::options_schema`].
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    /// Parses `run`'s options against this schema; see [`parse_with_schema`].
    pub fn parse<T: DeserializeOwned>(&self, options: &str) -> Result<T, String> {
        parse_with_schema(&self.to_value(), options)
    }
}

/// A strategy's options as one Rust type, which `run` receives parsed and `describe` publishes
/// as a JSON Schema. Declare the options once, as a struct deriving `Deserialize`, `Serialize`,
/// `Default` and `schemars::JsonSchema` with `#[serde(default)]` and
/// `#[schemars(crate = "drpo_kit::schemars", title = "...")]`, and implement this trait with
/// [`derived_schema`]: each field's doc comment is its description, its value in `Default` its
/// default, and `#[schemars(range(min = ...))]` its minimum.
pub trait StrategyOptions: Sized {
    /// The JSON Schema `describe` publishes (closed: unknown options are refused).
    fn schema() -> Value;

    /// Parses `run`'s options; by default against [`StrategyOptions::schema`], with
    /// [`parse_with_schema`].
    fn parse(options: &str) -> Result<Self, String>
    where
        Self: DeserializeOwned,
    {
        parse_with_schema(&Self::schema(), options)
    }
}

/// The options schema of a type declared as [`StrategyOptions`] describes: the title is the
/// type's `#[schemars(title = "...")]`; each property keeps its JSON type, description
/// and minimum, and takes its default from `T::default()` (so the fields of a
/// `#[serde(flatten)]` group take the defaults of the strategy that includes them).
pub fn derived_schema<T: schemars::JsonSchema + serde::Serialize + Default>() -> Value {
    let generated = schemars::schema_for!(T).to_value();
    let defs = generated["$defs"].clone();
    let defaults = serde_json::to_value(T::default()).unwrap_or(Value::Null);
    let title = generated["title"].as_str().unwrap_or_default();
    let mut schema = OptionsSchema::new(title);
    let empty = Map::new();
    for (name, generated) in generated["properties"].as_object().unwrap_or(&empty) {
        let mut property = Map::new();
        let choices = string_choices(&schema_defs(generated, &defs));
        let kind = match choices {
            Some(_) => "string",
            None => generated["type"].as_str().unwrap_or("object"),
        };
        property.insert("type".into(), json!(kind));
        if let Some(choices) = choices {
            property.insert("enum".into(), json!(choices));
        }
        match kind {
            // Data a strategy takes through its options: lists and maps of JSON objects.
            "array" => {
                property.insert("items".into(), json!({"type": "object"}));
            }
            "object" => {
                property.insert("additionalProperties".into(), json!({"type": "object"}));
            }
            _ => {}
        }
        if let Some(default) = defaults.get(name) {
            property.insert("default".into(), default.clone());
        }
        if let Some(minimum) = generated.get("minimum") {
            property.insert("minimum".into(), minimum.clone());
        }
        if let Some(description) = generated.get("description") {
            property.insert("description".into(), description.clone());
        }
        schema = schema.with(name, Value::Object(property));
    }
    schema.to_value()
}

/// The definition a generated property refers to (`$ref: #/$defs/NAME`), or the property.
fn schema_defs(generated: &Value, defs: &Value) -> Value {
    match generated["$ref"].as_str() {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap_or_default();
            defs[name].clone()
        }
        None => generated.clone(),
    }
}

/// The values of a string enum (a Rust enum of unit variants, as schemars writes it: `enum`,
/// or `oneOf` of `const`s when the variants have doc comments); `None` for anything else.
fn string_choices(resolved: &Value) -> Option<Vec<String>> {
    if let Some(values) = resolved["enum"].as_array() {
        return values
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect();
    }
    resolved["oneOf"]
        .as_array()?
        .iter()
        .map(|v| v["const"].as_str().map(str::to_owned))
        .collect()
}

/// Parses an options object against any JSON Schema of `type: object`: an empty text or `null`
/// means `{}`; every property's `default` fills a missing option; an option the schema does not
/// list, a value of the wrong JSON type, or one below its `minimum` is an error naming the
/// option (all problems at once). The completed object is then deserialized into `T`.
pub fn parse_with_schema<T: DeserializeOwned>(schema: &Value, options: &str) -> Result<T, String> {
    let trimmed = options.trim();
    let given = if trimmed.is_empty() || trimmed == "null" {
        Map::new()
    } else {
        match serde_json::from_str(trimmed) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err("options must be a JSON object".into()),
            Err(e) => return Err(format!("options are not JSON: {e}")),
        }
    };
    let empty = Map::new();
    let properties = schema["properties"].as_object().unwrap_or(&empty);
    let mut problems = Vec::new();
    let unknown: Vec<&str> = given
        .keys()
        .filter(|k| !properties.contains_key(*k))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = properties.keys().map(String::as_str).collect();
        problems.push(format!(
            "unknown option(s) {}; the options are {}",
            unknown.join(", "),
            known.join(", ")
        ));
    }
    let mut complete = Map::new();
    for (name, property) in properties {
        let Some(value) = given.get(name).or_else(|| property.get("default")) else {
            continue;
        };
        if let Some(problem) = check(name, property, value) {
            problems.push(problem);
        }
        complete.insert(name.clone(), value.clone());
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    serde_json::from_value(Value::Object(complete)).map_err(|e| format!("invalid options: {e}"))
}

fn check(name: &str, property: &Value, value: &Value) -> Option<String> {
    let expected = property["type"].as_str().unwrap_or("any");
    let fits = match expected {
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        _ => true,
    };
    if !fits {
        return Some(format!(
            "option {name} must be of type {expected}, not {value}"
        ));
    }
    if let Some(choices) = property["enum"].as_array()
        && !choices.contains(value)
    {
        let names: Vec<String> = choices.iter().map(Value::to_string).collect();
        return Some(format!(
            "option {name} must be one of {}, not {value}",
            names.join(", ")
        ));
    }
    let minimum = property.get("minimum").and_then(Value::as_f64)?;
    match value.as_f64() {
        Some(v) if v < minimum => Some(format!(
            "option {name} must be at least {minimum}, not {value}"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Options {
        iterations: u32,
        exploration: f64,
        greedy: bool,
        start: String,
    }

    fn schema() -> OptionsSchema {
        OptionsSchema::new("t")
            .integer("iterations", 8, 1, "i")
            .number("exploration", 1.5, 0.0, "c")
            .boolean("greedy", false, "g")
            .string("start", "Be helpful.", "s")
    }

    #[test]
    fn array_options_default_to_empty_and_refuse_other_types() {
        #[derive(Debug, Deserialize)]
        struct Lists {
            items: Vec<Value>,
        }
        let schema = OptionsSchema::new("t").array("items", "things");
        assert!(schema.parse::<Lists>("{}").unwrap().items.is_empty());
        let given: Lists = schema.parse(r#"{"items": [{"a": 1}]}"#).unwrap();
        assert_eq!(given.items, vec![json!({"a": 1})]);
        let wrong = schema.parse::<Lists>(r#"{"items": 3}"#).unwrap_err();
        assert!(wrong.contains("items must be of type array"), "{wrong}");
    }

    #[test]
    fn map_options_default_to_empty_and_refuse_other_types() {
        #[derive(Debug, Deserialize)]
        struct Cache {
            cache: std::collections::BTreeMap<String, Value>,
        }
        let schema = OptionsSchema::new("t").object_map("cache", "known answers");
        assert!(schema.parse::<Cache>("{}").unwrap().cache.is_empty());
        let given: Cache = schema.parse(r#"{"cache": {"q": {"a": 1}}}"#).unwrap();
        assert_eq!(given.cache["q"], json!({"a": 1}));
        let wrong = schema.parse::<Cache>(r#"{"cache": [1]}"#).unwrap_err();
        assert!(wrong.contains("cache must be of type object"), "{wrong}");
    }

    #[test]
    fn defaults_come_from_the_schema() {
        let all = Options {
            iterations: 8,
            exploration: 1.5,
            greedy: false,
            start: "Be helpful.".into(),
        };
        assert_eq!(schema().parse::<Options>("").unwrap(), all);
        assert_eq!(schema().parse::<Options>(" null").unwrap(), all);
        let some: Options = schema()
            .parse(r#"{"iterations": 3, "greedy": true}"#)
            .unwrap();
        assert_eq!(
            (some.iterations, some.greedy, some.exploration),
            (3, true, 1.5)
        );
    }

    #[test]
    fn every_problem_is_named() {
        let err = schema()
            .parse::<Options>(r#"{"iteration": 3, "exploration": -1, "greedy": "yes"}"#)
            .unwrap_err();
        assert!(err.contains("unknown option(s) iteration"), "{err}");
        assert!(err.contains("exploration must be at least 0"), "{err}");
        assert!(err.contains("greedy must be of type boolean"), "{err}");
        assert!(
            schema()
                .parse::<Options>("[1]")
                .unwrap_err()
                .contains("object")
        );
        assert!(
            schema()
                .parse::<Options>("{")
                .unwrap_err()
                .contains("not JSON")
        );
    }

    #[test]
    fn the_schema_is_closed_and_lists_defaults() {
        let value = schema().to_value();
        assert_eq!(value["additionalProperties"], false);
        assert_eq!(value["properties"]["iterations"]["default"], 8);
        assert_eq!(value["properties"]["iterations"]["minimum"], 1);
    }
}

#[cfg(test)]
mod derived {
    use super::*;
    use crate::Settings;
    use serde::{Deserialize, Serialize};

    /// Doc comments are descriptions; this line is not the title.
    #[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
    #[schemars(title = "Sample options")]
    #[serde(default)]
    struct Sample {
        /// Steps to take.
        #[schemars(range(min = 1))]
        steps: u32,
        /// Data taken through the options.
        items: Vec<Value>,
        /// The shared request settings.
        #[serde(flatten)]
        requests: Settings,
    }

    impl Default for Sample {
        fn default() -> Self {
            Sample {
                steps: 4,
                items: Vec::new(),
                requests: Settings::with_temperature(0.5),
            }
        }
    }

    impl StrategyOptions for Sample {
        fn schema() -> Value {
            derived_schema::<Self>()
        }
    }

    #[test]
    fn the_derived_schema_is_the_builders() {
        let schema = Sample::schema();
        assert_eq!(schema["title"], "Sample options");
        assert_eq!(schema["additionalProperties"], false);
        let built = OptionsSchema::new("Sample options")
            .integer("steps", 4, 1, "Steps to take.")
            .array("items", "Data taken through the options.")
            .to_value();
        for name in ["steps", "items"] {
            assert_eq!(
                schema["properties"][name], built["properties"][name],
                "{name}"
            );
        }
        // A flattened group takes the including type's defaults.
        assert_eq!(schema["properties"]["temperature"]["default"], 0.5);
        assert_eq!(schema["properties"]["temperature"]["minimum"], 0.0);
        assert_eq!(schema["properties"]["k"]["minimum"], 1);
    }

    #[test]
    fn parsing_fills_defaults_and_names_what_is_wrong() {
        let sample = Sample::parse(r#"{"steps": 2, "seed": 7}"#).unwrap();
        assert_eq!((sample.steps, sample.requests.seed), (2, 7));
        assert_eq!(sample.requests.temperature, 0.5);
        let wrong = Sample::parse(r#"{"steps": 0, "stpes": 1}"#).unwrap_err();
        assert!(
            wrong.contains("stpes") && wrong.contains("steps"),
            "{wrong}"
        );
    }
}

#[cfg(test)]
mod choices {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
    #[serde(rename_all = "lowercase")]
    enum Plain {
        #[default]
        Fast,
        Slow,
    }

    /// Variants with doc comments, which schemars writes as `oneOf` of `const`s.
    #[derive(Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
    #[serde(rename_all = "lowercase")]
    enum Documented {
        /// The first way.
        #[default]
        Left,
        /// The other way.
        Right,
    }

    #[derive(Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
    #[serde(default)]
    struct Picks {
        /// How fast.
        speed: Plain,
        /// Which way.
        side: Documented,
    }

    impl StrategyOptions for Picks {
        fn schema() -> Value {
            derived_schema::<Self>()
        }
    }

    #[test]
    fn enum_options_are_strings_with_their_values_and_others_are_refused() {
        let schema = Picks::schema();
        for (name, values, default) in [
            ("speed", json!(["fast", "slow"]), "fast"),
            ("side", json!(["left", "right"]), "left"),
        ] {
            let property = &schema["properties"][name];
            assert_eq!(property["type"], "string", "{schema}");
            assert_eq!(property["enum"], values, "{schema}");
            assert_eq!(property["default"], default);
        }
        let picked = Picks::parse(r#"{"side": "right"}"#).unwrap();
        assert_eq!(
            (picked.speed, picked.side),
            (Plain::Fast, Documented::Right)
        );
        let wrong = Picks::parse(r#"{"speed": "medium", "side": 1}"#).unwrap_err();
        assert!(
            wrong.contains(r#"option speed must be one of "fast", "slow", not "medium""#)
                && wrong.contains("side must be of type string"),
            "{wrong}"
        );
    }
}
