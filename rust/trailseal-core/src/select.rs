//! CloudTrail event selectors: which events a trail logs (issue 3).
//!
//! A trail has either basic `event_selectors` or `advanced_event_selectors` (never both, as
//! PutEventSelectors refuses), in CloudTrail's own shapes and member names. [`Selectors::from_json`]
//! applies every check CloudTrail applies when it takes them (counts, lengths, allowed fields and
//! operators per event category, value formats) and compiles them; [`Selectors::matches`] then
//! decides one event with no allocation. Input shape:
//! `{"event_selectors": [...]}`, `{"advanced_event_selectors": [...]}` or `{}`.
//!
//! Semantics (CloudTrail's documented behaviour; the golden table `tests/vectors/selectors.json`
//! pins each point):
//! - No selectors: every management event, read and write; no data, network activity or
//!   Insight events.
//! - An event is logged when it matches ANY selector.
//! - Basic selector: a management event (`eventCategory` "Management") matches when
//!   `IncludeManagementEvents` (default true), `ReadWriteType` (default All) fits `readOnly` and
//!   its `eventSource` is not in `ExcludeManagementEventSources`. A data event (`eventCategory`
//!   "Data") matches when `ReadWriteType` fits and one of its `resources` has the `Type` of a
//!   `DataResources` entry and an ARN that entry's `Values` select: `arn:<partition>:s3`,
//!   `arn:<partition>:lambda`, `arn:<partition>:dynamodb` select every resource of the type;
//!   an S3 value `arn:…:s3:::bucket/prefix` selects object ARNs starting with it; Lambda
//!   function and DynamoDB table ARNs are exact.
//! - Advanced selector: all its field selectors hold (AND). In one field selector each operator
//!   present is a condition and all must hold: a positive operator (Equals, StartsWith,
//!   EndsWith) holds when the value matches ANY of its values; a negative one (NotEquals,
//!   NotStartsWith, NotEndsWith) when it matches NONE. Comparisons are exact and
//!   case-sensitive. `resources.type` and `resources.ARN` must hold on one and the same entry
//!   of the event's `resources`. A field absent from the event (`userIdentity.arn`,
//!   `errorCode`, `vpcEndpointId`) fails positive operators and passes negative ones;
//!   an absent `sessionCredentialFromConsole` reads as "false" (CloudTrail writes it only when
//!   "true").
//! - The event category of an event is its `eventCategory` field (`managementEvent` is not a
//!   selector field in CloudTrail and is not consulted).
use serde_json::{Map, Value};

/// Why a selector set was refused, or why an event could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// CloudTrail would refuse these selectors (InvalidEventSelectorsException); the message
    /// names the selector index, the member and the rule.
    #[error("{0}")]
    Invalid(String),
    /// The event given to [`EventRecord::from_canonical`] is not an event object.
    #[error("{0}")]
    BadEvent(String),
}

fn invalid(message: String) -> SelectorError {
    SelectorError::Invalid(message)
}

// ---------------------------------------------------------------------------------------------
// Limits (botocore's CloudTrail model and the PutEventSelectors documentation)

/// "You can configure up to five event selectors for a trail."
pub const MAX_EVENT_SELECTORS: usize = 5;
/// "A trail is limited to 250 data resources … across event selectors" (values selecting every
/// resource of a type are not counted: "This limit does not apply if you configure resource
/// logging for all data events").
pub const MAX_DATA_RESOURCE_VALUES: usize = 250;
/// "a maximum of 500 total values for all conditions in all advanced event selectors".
pub const MAX_ADVANCED_VALUES: usize = 500;
/// SelectorName: 0..=1000 characters.
pub const MAX_SELECTOR_NAME_CHARS: usize = 1000;
/// SelectorField: 1..=1000 characters of `[\w|\d|\.|_]`.
pub const MAX_FIELD_CHARS: usize = 1000;
/// OperatorValue: 1..=2048 characters.
pub const MAX_OPERATOR_VALUE_CHARS: usize = 2048;

const BASIC_RESOURCE_TYPES: [&str; 3] = [
    "AWS::S3::Object",
    "AWS::Lambda::Function",
    "AWS::DynamoDB::Table",
];
const EXCLUDABLE_SOURCES: [&str; 2] = ["kms.amazonaws.com", "rdsdata.amazonaws.com"];

// ---------------------------------------------------------------------------------------------
// The event side

/// One entry of an event's `resources` array.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resource<'a> {
    pub resource_type: Option<&'a str>,
    pub arn: Option<&'a str>,
}

/// The selector-relevant values of one event (after defaults), borrowed.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    pub event_category: &'a str,
    pub event_source: &'a str,
    pub event_name: &'a str,
    pub event_type: &'a str,
    pub read_only: bool,
    pub resources: &'a [Resource<'a>],
    /// `userIdentity.arn`
    pub user_identity_arn: Option<&'a str>,
    pub error_code: Option<&'a str>,
    /// The record's string `"true"`/`"false"`; None when absent.
    pub session_credential_from_console: Option<&'a str>,
    pub vpc_endpoint_id: Option<&'a str>,
}

/// An owned copy of the selector-relevant fields of a canonical event (tests, tools).
#[derive(Debug, Clone, Default)]
pub struct EventRecord {
    event_category: String,
    event_source: String,
    event_name: String,
    event_type: String,
    read_only: bool,
    resources: Vec<(Option<String>, Option<String>)>,
    user_identity_arn: Option<String>,
    error_code: Option<String>,
    session_credential_from_console: Option<String>,
    vpc_endpoint_id: Option<String>,
}

impl EventRecord {
    /// Read a canonical event (a JSON object after defaults: `eventCategory`, `eventSource`,
    /// `eventName`, `eventType`, `readOnly` present). Values of the wrong type are errors.
    pub fn from_canonical(bytes: &[u8]) -> Result<EventRecord, SelectorError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| SelectorError::BadEvent(format!("event is not JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| SelectorError::BadEvent("event is not a JSON object".into()))?;
        let required = |name: &str| -> Result<String, SelectorError> {
            match obj.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(SelectorError::BadEvent(format!(
                    "event field {name} must be a string (fill defaults before selecting)"
                ))),
            }
        };
        let optional = |v: Option<&Value>, name: &str| -> Result<Option<String>, SelectorError> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(SelectorError::BadEvent(format!(
                    "event field {name} must be a string"
                ))),
            }
        };
        let read_only = match obj.get("readOnly") {
            Some(Value::Bool(b)) => *b,
            _ => {
                return Err(SelectorError::BadEvent(
                    "event field readOnly must be a boolean (fill defaults before selecting)"
                        .into(),
                ))
            }
        };
        let mut resources = Vec::new();
        match obj.get("resources") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let r = item.as_object().ok_or_else(|| {
                        SelectorError::BadEvent(format!("event resources[{i}] is not an object"))
                    })?;
                    resources.push((
                        optional(r.get("type"), &format!("resources[{i}].type"))?,
                        optional(r.get("ARN"), &format!("resources[{i}].ARN"))?,
                    ));
                }
            }
            Some(_) => {
                return Err(SelectorError::BadEvent(
                    "event field resources must be an array".into(),
                ))
            }
        }
        let user_identity_arn = match obj.get("userIdentity") {
            Some(Value::Object(ui)) => optional(ui.get("arn"), "userIdentity.arn")?,
            _ => None,
        };
        Ok(EventRecord {
            event_category: required("eventCategory")?,
            event_source: required("eventSource")?,
            event_name: required("eventName")?,
            event_type: required("eventType")?,
            read_only,
            resources,
            user_identity_arn,
            error_code: optional(obj.get("errorCode"), "errorCode")?,
            session_credential_from_console: optional(
                obj.get("sessionCredentialFromConsole"),
                "sessionCredentialFromConsole",
            )?,
            vpc_endpoint_id: optional(obj.get("vpcEndpointId"), "vpcEndpointId")?,
        })
    }

    /// Run `f` on the borrowed [`EventFields`] of this record.
    pub fn with_fields<T>(&self, f: impl FnOnce(&EventFields<'_>) -> T) -> T {
        let resources: Vec<Resource<'_>> = self
            .resources
            .iter()
            .map(|(t, a)| Resource {
                resource_type: t.as_deref(),
                arn: a.as_deref(),
            })
            .collect();
        f(&EventFields {
            event_category: &self.event_category,
            event_source: &self.event_source,
            event_name: &self.event_name,
            event_type: &self.event_type,
            read_only: self.read_only,
            resources: &resources,
            user_identity_arn: self.user_identity_arn.as_deref(),
            error_code: self.error_code.as_deref(),
            session_credential_from_console: self.session_credential_from_console.as_deref(),
            vpc_endpoint_id: self.vpc_endpoint_id.as_deref(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Compiled selectors

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadWrite {
    ReadOnly,
    WriteOnly,
    All,
}

impl ReadWrite {
    fn admits(self, read_only: bool) -> bool {
        match self {
            ReadWrite::ReadOnly => read_only,
            ReadWrite::WriteOnly => !read_only,
            ReadWrite::All => true,
        }
    }
}

/// How one DataResources value selects ARNs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ArnRule {
    /// Every resource of the type (`arn:aws:s3`, `arn:aws:lambda`, `arn:aws:dynamodb`).
    All,
    /// ARNs starting with the value (S3 `bucket/prefix`).
    Prefix(String),
    /// Exactly this ARN (Lambda functions, DynamoDB tables).
    Exact(String),
}

#[derive(Debug, Clone)]
struct DataResource {
    resource_type: String,
    rules: Vec<ArnRule>,
}

#[derive(Debug, Clone)]
struct BasicSelector {
    read_write: ReadWrite,
    include_management: bool,
    data_resources: Vec<DataResource>,
    exclude_sources: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    EventCategory,
    EventSource,
    EventName,
    EventType,
    ReadOnly,
    ResourcesType,
    ResourcesArn,
    UserIdentityArn,
    ErrorCode,
    SessionCredentialFromConsole,
    VpcEndpointId,
}

impl Field {
    const ALL: [(&'static str, Field); 11] = [
        ("eventCategory", Field::EventCategory),
        ("eventSource", Field::EventSource),
        ("eventName", Field::EventName),
        ("eventType", Field::EventType),
        ("readOnly", Field::ReadOnly),
        ("resources.type", Field::ResourcesType),
        ("resources.ARN", Field::ResourcesArn),
        ("userIdentity.arn", Field::UserIdentityArn),
        ("errorCode", Field::ErrorCode),
        (
            "sessionCredentialFromConsole",
            Field::SessionCredentialFromConsole,
        ),
        ("vpcEndpointId", Field::VpcEndpointId),
    ];

    fn parse(name: &str) -> Option<Field> {
        Field::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    fn name(self) -> &'static str {
        Field::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    fn is_resource(self) -> bool {
        matches!(self, Field::ResourcesType | Field::ResourcesArn)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equals,
    StartsWith,
    EndsWith,
    NotEquals,
    NotStartsWith,
    NotEndsWith,
}

impl Op {
    const ALL: [(&'static str, Op); 6] = [
        ("Equals", Op::Equals),
        ("StartsWith", Op::StartsWith),
        ("EndsWith", Op::EndsWith),
        ("NotEquals", Op::NotEquals),
        ("NotStartsWith", Op::NotStartsWith),
        ("NotEndsWith", Op::NotEndsWith),
    ];

    fn negative(self) -> bool {
        matches!(self, Op::NotEquals | Op::NotStartsWith | Op::NotEndsWith)
    }

    /// Does `value` match one of `targets` by this operator's base comparison?
    fn any(self, value: &str, targets: &[String]) -> bool {
        match self {
            Op::Equals | Op::NotEquals => targets.iter().any(|t| value == t),
            Op::StartsWith | Op::NotStartsWith => targets.iter().any(|t| value.starts_with(&**t)),
            Op::EndsWith | Op::NotEndsWith => targets.iter().any(|t| value.ends_with(&**t)),
        }
    }

    /// The condition on a present value.
    fn holds(self, value: &str, targets: &[String]) -> bool {
        self.any(value, targets) != self.negative()
    }
}

/// One operator of a field selector with its values.
#[derive(Debug, Clone)]
struct Condition {
    op: Op,
    values: Vec<String>,
}

#[derive(Debug, Clone)]
struct FieldCondition {
    field: Field,
    conditions: Vec<Condition>,
}

impl FieldCondition {
    /// All conditions on a value; `None` (field absent) fails positive operators and passes
    /// negative ones.
    fn holds(&self, value: Option<&str>) -> bool {
        self.conditions.iter().all(|c| match value {
            Some(v) => c.op.holds(v, &c.values),
            None => c.op.negative(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Management,
    Data,
    NetworkActivity,
    Insight,
}

impl Category {
    fn as_str(self) -> &'static str {
        match self {
            Category::Management => "Management",
            Category::Data => "Data",
            Category::NetworkActivity => "NetworkActivity",
            Category::Insight => "Insight",
        }
    }

    fn allowed_fields(self) -> &'static [Field] {
        match self {
            Category::Management => &[
                Field::EventCategory,
                Field::EventSource,
                Field::EventName,
                Field::EventType,
                Field::ReadOnly,
                Field::SessionCredentialFromConsole,
                Field::UserIdentityArn,
            ],
            Category::Data => &[
                Field::EventCategory,
                Field::EventSource,
                Field::EventName,
                Field::EventType,
                Field::ReadOnly,
                Field::ResourcesType,
                Field::ResourcesArn,
                Field::SessionCredentialFromConsole,
                Field::UserIdentityArn,
            ],
            Category::NetworkActivity => &[
                Field::EventCategory,
                Field::EventSource,
                Field::EventName,
                Field::ErrorCode,
                Field::VpcEndpointId,
                Field::UserIdentityArn,
            ],
            Category::Insight => &[Field::EventCategory],
        }
    }
}

#[derive(Debug, Clone)]
struct AdvancedSelector {
    category: Category,
    /// Conditions on event-level fields (everything but eventCategory and resources.*).
    event_conditions: Vec<FieldCondition>,
    /// Conditions that must hold together on one `resources` entry (empty: no requirement).
    resource_conditions: Vec<FieldCondition>,
}

impl AdvancedSelector {
    fn matches(&self, ev: &EventFields<'_>) -> bool {
        if ev.event_category != self.category.as_str() {
            return false;
        }
        for fc in &self.event_conditions {
            let value = match fc.field {
                Field::EventSource => Some(ev.event_source),
                Field::EventName => Some(ev.event_name),
                Field::EventType => Some(ev.event_type),
                Field::ReadOnly => Some(if ev.read_only { "true" } else { "false" }),
                Field::UserIdentityArn => ev.user_identity_arn,
                Field::ErrorCode => ev.error_code,
                Field::SessionCredentialFromConsole => {
                    Some(ev.session_credential_from_console.unwrap_or("false"))
                }
                Field::VpcEndpointId => ev.vpc_endpoint_id,
                // Compiled elsewhere; never in event_conditions.
                Field::EventCategory | Field::ResourcesType | Field::ResourcesArn => continue,
            };
            if !fc.holds(value) {
                return false;
            }
        }
        if self.resource_conditions.is_empty() {
            return true;
        }
        ev.resources.iter().any(|r| {
            self.resource_conditions.iter().all(|fc| {
                fc.holds(if fc.field == Field::ResourcesType {
                    r.resource_type
                } else {
                    r.arn
                })
            })
        })
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Default,
    Basic(Vec<BasicSelector>),
    Advanced(Vec<AdvancedSelector>),
}

/// A trail's compiled event selectors.
#[derive(Debug, Clone)]
pub struct Selectors {
    kind: Kind,
}

impl Default for Selectors {
    /// No selectors: all management events, read and write.
    fn default() -> Self {
        Selectors {
            kind: Kind::Default,
        }
    }
}

impl Selectors {
    /// Parse and check `{"event_selectors": [...]}`, `{"advanced_event_selectors": [...]}` or
    /// `{}`, refusing (with the selector index, member and rule) whatever CloudTrail refuses.
    pub fn from_json(text: &str) -> Result<Selectors, SelectorError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| invalid(format!("selectors are not valid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| {
            invalid(
                "selectors must be a JSON object with event_selectors or advanced_event_selectors"
                    .into(),
            )
        })?;
        for key in obj.keys() {
            if key != "event_selectors" && key != "advanced_event_selectors" {
                return Err(invalid(format!(
                    "unknown key {key:?}: expected event_selectors or advanced_event_selectors"
                )));
            }
        }
        match (
            obj.get("event_selectors"),
            obj.get("advanced_event_selectors"),
        ) {
            (Some(_), Some(_)) => Err(invalid(
                "a trail may have event_selectors or advanced_event_selectors, not both \
                 (CloudTrail refuses both in one PutEventSelectors); keep one of them"
                    .into(),
            )),
            (Some(basic), None) => Ok(Selectors {
                kind: Kind::Basic(parse_basic(basic)?),
            }),
            (None, Some(advanced)) => Ok(Selectors {
                kind: Kind::Advanced(parse_advanced(advanced)?),
            }),
            (None, None) => Ok(Selectors::default()),
        }
    }

    /// Does the trail log this event?
    pub fn matches(&self, ev: &EventFields<'_>) -> bool {
        match &self.kind {
            Kind::Default => ev.event_category == "Management",
            Kind::Basic(selectors) => selectors.iter().any(|s| basic_matches(s, ev)),
            Kind::Advanced(selectors) => selectors.iter().any(|s| s.matches(ev)),
        }
    }

    /// True when the trail logs every management event and nothing else (no selectors given).
    pub fn is_default(&self) -> bool {
        matches!(self.kind, Kind::Default)
    }
}

fn basic_matches(s: &BasicSelector, ev: &EventFields<'_>) -> bool {
    if !s.read_write.admits(ev.read_only) {
        return false;
    }
    match ev.event_category {
        "Management" => {
            s.include_management && !s.exclude_sources.iter().any(|x| x == ev.event_source)
        }
        "Data" => s.data_resources.iter().any(|dr| {
            ev.resources.iter().any(|r| {
                r.resource_type == Some(dr.resource_type.as_str())
                    && r.arn.is_some_and(|arn| {
                        dr.rules.iter().any(|rule| match rule {
                            ArnRule::All => true,
                            ArnRule::Prefix(p) => arn.starts_with(p.as_str()),
                            ArnRule::Exact(e) => arn == e,
                        })
                    })
            })
        }),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and CloudTrail's checks

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn as_array<'v>(v: &'v Value, at: &str) -> Result<&'v Vec<Value>, SelectorError> {
    v.as_array()
        .ok_or_else(|| invalid(format!("{at}: expected an array, got {}", json_kind(v))))
}

fn as_object<'v>(v: &'v Value, at: &str) -> Result<&'v Map<String, Value>, SelectorError> {
    v.as_object()
        .ok_or_else(|| invalid(format!("{at}: expected an object, got {}", json_kind(v))))
}

fn as_str<'v>(v: &'v Value, at: &str) -> Result<&'v str, SelectorError> {
    v.as_str()
        .ok_or_else(|| invalid(format!("{at}: expected a string, got {}", json_kind(v))))
}

fn check_members(obj: &Map<String, Value>, at: &str, known: &[&str]) -> Result<(), SelectorError> {
    for key in obj.keys() {
        if !known.contains(&key.as_str()) {
            return Err(invalid(format!(
                "{at}: unknown member {key:?}; CloudTrail's members are {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

fn parse_basic(v: &Value) -> Result<Vec<BasicSelector>, SelectorError> {
    let items = as_array(v, "event_selectors")?;
    if items.is_empty() || items.len() > MAX_EVENT_SELECTORS {
        return Err(invalid(format!(
            "event_selectors: {} selectors given; CloudTrail takes 1 to {MAX_EVENT_SELECTORS} \
             (remove the key for the default: all management events)",
            items.len()
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    let mut counted_values = 0usize;
    for (i, item) in items.iter().enumerate() {
        let at = format!("event_selectors[{i}]");
        let obj = as_object(item, &at)?;
        check_members(
            obj,
            &at,
            &[
                "ReadWriteType",
                "IncludeManagementEvents",
                "DataResources",
                "ExcludeManagementEventSources",
            ],
        )?;
        let read_write = match obj.get("ReadWriteType") {
            None => ReadWrite::All,
            Some(v) => match as_str(v, &format!("{at}.ReadWriteType"))? {
                "ReadOnly" => ReadWrite::ReadOnly,
                "WriteOnly" => ReadWrite::WriteOnly,
                "All" => ReadWrite::All,
                other => {
                    return Err(invalid(format!(
                        "{at}.ReadWriteType: {other:?} is not ReadOnly, WriteOnly or All"
                    )))
                }
            },
        };
        let include_management = match obj.get("IncludeManagementEvents") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(invalid(format!(
                    "{at}.IncludeManagementEvents: expected true or false, got {}",
                    json_kind(v)
                )))
            }
        };
        let mut data_resources = Vec::new();
        if let Some(v) = obj.get("DataResources") {
            for (j, dr) in as_array(v, &format!("{at}.DataResources"))?
                .iter()
                .enumerate()
            {
                let dat = format!("{at}.DataResources[{j}]");
                let (parsed, counted) = parse_data_resource(dr, &dat)?;
                counted_values += counted;
                if counted_values > MAX_DATA_RESOURCE_VALUES {
                    return Err(invalid(format!(
                        "{dat}.Values: more than {MAX_DATA_RESOURCE_VALUES} data resource values \
                         across all event selectors of the trail (CloudTrail's limit); use a \
                         shorter prefix or advanced_event_selectors"
                    )));
                }
                data_resources.push(parsed);
            }
        }
        let mut exclude_sources = Vec::new();
        if let Some(v) = obj.get("ExcludeManagementEventSources") {
            for (j, src) in as_array(v, &format!("{at}.ExcludeManagementEventSources"))?
                .iter()
                .enumerate()
            {
                let sat = format!("{at}.ExcludeManagementEventSources[{j}]");
                let src = as_str(src, &sat)?;
                if !EXCLUDABLE_SOURCES.contains(&src) {
                    return Err(invalid(format!(
                        "{sat}: {src:?} cannot be excluded; CloudTrail excludes only {}",
                        EXCLUDABLE_SOURCES.join(" and ")
                    )));
                }
                exclude_sources.push(src.to_string());
            }
        }
        out.push(BasicSelector {
            read_write,
            include_management,
            data_resources,
            exclude_sources,
        });
    }
    Ok(out)
}

/// Returns the compiled data resource and how many of its values count toward the 250 limit.
fn parse_data_resource(v: &Value, at: &str) -> Result<(DataResource, usize), SelectorError> {
    let obj = as_object(v, at)?;
    check_members(obj, at, &["Type", "Values"])?;
    let resource_type = match obj.get("Type") {
        Some(t) => as_str(t, &format!("{at}.Type"))?,
        None => {
            return Err(invalid(format!(
                "{at}.Type: missing; name the resource type"
            )))
        }
    };
    if !BASIC_RESOURCE_TYPES.contains(&resource_type) {
        return Err(invalid(format!(
            "{at}.Type: {resource_type:?} is not a basic event selector resource type ({}); \
             use advanced_event_selectors for other types",
            BASIC_RESOURCE_TYPES.join(", ")
        )));
    }
    let values = match obj.get("Values") {
        Some(vs) => as_array(vs, &format!("{at}.Values"))?,
        None => {
            return Err(invalid(format!(
                "{at}.Values: missing; list ARNs or ARN prefixes"
            )))
        }
    };
    if values.is_empty() {
        return Err(invalid(format!(
            "{at}.Values: empty; list at least one ARN or ARN prefix"
        )));
    }
    let mut rules = Vec::with_capacity(values.len());
    let mut counted = 0;
    for (k, val) in values.iter().enumerate() {
        let vat = format!("{at}.Values[{k}]");
        let arn = as_str(val, &vat)?;
        let rule = data_resource_rule(resource_type, arn).map_err(|why| {
            invalid(format!(
                "{vat}: {arn:?} is not valid for {resource_type}: {why}"
            ))
        })?;
        if rule != ArnRule::All {
            counted += 1;
        }
        rules.push(rule);
    }
    Ok((
        DataResource {
            resource_type: resource_type.to_string(),
            rules,
        },
        counted,
    ))
}

/// Split `arn:partition:service:region:account:resource` (the resource may hold ':').
fn arn_parts(arn: &str) -> Option<[&str; 6]> {
    let mut it = arn.splitn(6, ':');
    let parts = [
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
    ];
    (parts[0] == "arn" && is_partition(parts[1])).then_some(parts)
}

fn is_partition(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn data_resource_rule(resource_type: &str, arn: &str) -> Result<ArnRule, &'static str> {
    let service = match resource_type {
        "AWS::S3::Object" => "s3",
        "AWS::Lambda::Function" => "lambda",
        _ => "dynamodb",
    };
    // "arn:<partition>:<service>" selects every resource of the type.
    if let Some((partition, svc)) = arn
        .strip_prefix("arn:")
        .and_then(|rest| rest.split_once(':'))
    {
        if is_partition(partition) && svc == service {
            return Ok(ArnRule::All);
        }
    }
    let parts = arn_parts(arn)
        .ok_or("expected arn:<partition>:<service>, or an ARN of the type's resources")?;
    match service {
        "s3" => {
            // arn:aws:s3:::bucket/[prefix]
            let bucket_ok = parts[2] == "s3"
                && parts[3].is_empty()
                && parts[4].is_empty()
                && parts[5].split_once('/').is_some_and(|(b, _)| !b.is_empty());
            if !bucket_ok {
                return Err("S3 values are arn:<partition>:s3 (all buckets) or \
                            arn:<partition>:s3:::bucket/ with an optional object prefix");
            }
            Ok(ArnRule::Prefix(arn.to_string()))
        }
        "lambda" => {
            let ok = parts[2] == "lambda"
                && !parts[3].is_empty()
                && is_account(parts[4])
                && parts[5]
                    .strip_prefix("function:")
                    .is_some_and(|name| !name.is_empty());
            if !ok {
                return Err(
                    "Lambda values are arn:<partition>:lambda (all functions) or a \
                            function ARN arn:<partition>:lambda:<region>:<account>:function:<name>",
                );
            }
            Ok(ArnRule::Exact(arn.to_string()))
        }
        _ => {
            let ok = parts[2] == "dynamodb"
                && !parts[3].is_empty()
                && is_account(parts[4])
                && parts[5]
                    .strip_prefix("table/")
                    .is_some_and(|name| !name.is_empty() && !name.contains('/'));
            if !ok {
                return Err(
                    "DynamoDB values are arn:<partition>:dynamodb (all tables) or a \
                            table ARN arn:<partition>:dynamodb:<region>:<account>:table/<name>",
                );
            }
            Ok(ArnRule::Exact(arn.to_string()))
        }
    }
}

fn parse_advanced(v: &Value) -> Result<Vec<AdvancedSelector>, SelectorError> {
    let items = as_array(v, "advanced_event_selectors")?;
    if items.is_empty() {
        return Err(invalid(
            "advanced_event_selectors: empty; give at least one selector (or remove the key \
             for the default: all management events)"
                .into(),
        ));
    }
    let mut total_values = 0usize;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("advanced_event_selectors[{i}]");
        let obj = as_object(item, &at)?;
        check_members(obj, &at, &["Name", "FieldSelectors"])?;
        let at = match obj.get("Name") {
            None => at,
            Some(n) => {
                let name = as_str(n, &format!("{at}.Name"))?;
                if name.chars().count() > MAX_SELECTOR_NAME_CHARS {
                    return Err(invalid(format!(
                        "{at}.Name: longer than {MAX_SELECTOR_NAME_CHARS} characters"
                    )));
                }
                format!("{at} ({name:?})")
            }
        };
        let fields = match obj.get("FieldSelectors") {
            Some(f) => as_array(f, &format!("{at}.FieldSelectors"))?,
            None => {
                return Err(invalid(format!(
                    "{at}.FieldSelectors: missing; every advanced selector needs field selectors, \
                     at least eventCategory"
                )))
            }
        };
        if fields.is_empty() {
            return Err(invalid(format!(
                "{at}.FieldSelectors: empty; at least eventCategory is required"
            )));
        }
        let mut parsed: Vec<FieldCondition> = Vec::with_capacity(fields.len());
        for (j, fs) in fields.iter().enumerate() {
            let fat = format!("{at}.FieldSelectors[{j}]");
            let fc = parse_field_selector(fs, &fat)?;
            if parsed.iter().any(|p| p.field == fc.field) {
                return Err(invalid(format!(
                    "{fat}: field {} appears twice in one selector; put all its operators in one \
                     field selector, or add another selector",
                    fc.field.name()
                )));
            }
            total_values += fc.conditions.iter().map(|c| c.values.len()).sum::<usize>();
            if total_values > MAX_ADVANCED_VALUES {
                return Err(invalid(format!(
                    "{fat}: more than {MAX_ADVANCED_VALUES} values in all conditions of all \
                     advanced event selectors (CloudTrail's limit)"
                )));
            }
            parsed.push(fc);
        }
        out.push(compile_advanced(parsed, &at)?);
    }
    Ok(out)
}

fn parse_field_selector(v: &Value, at: &str) -> Result<FieldCondition, SelectorError> {
    let obj = as_object(v, at)?;
    let mut known = vec!["Field"];
    known.extend(Op::ALL.iter().map(|(n, _)| *n));
    check_members(obj, at, &known)?;
    let name = match obj.get("Field") {
        Some(f) => as_str(f, &format!("{at}.Field"))?,
        None => {
            return Err(invalid(format!(
                "{at}.Field: missing; name the event field"
            )))
        }
    };
    let pattern_ok = !name.is_empty()
        && name.chars().count() <= MAX_FIELD_CHARS
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '|');
    if !pattern_ok {
        return Err(invalid(format!(
            "{at}.Field: {name:?} is not a field name (1-{MAX_FIELD_CHARS} letters, digits, '.', '_')"
        )));
    }
    let field = Field::parse(name).ok_or_else(|| {
        let names: Vec<&str> = Field::ALL.iter().map(|(n, _)| *n).collect();
        invalid(format!(
            "{at}.Field: {name:?} is not a field CloudTrail selects on; use one of {}",
            names.join(", ")
        ))
    })?;
    let at = format!("{at} (Field {name})");
    let mut conditions = Vec::new();
    for (op_name, op) in Op::ALL {
        let Some(list) = obj.get(op_name) else {
            continue;
        };
        let oat = format!("{at}.{op_name}");
        let list = as_array(list, &oat)?;
        if list.is_empty() {
            return Err(invalid(format!("{oat}: empty; give at least one value")));
        }
        let mut values = Vec::with_capacity(list.len());
        for (k, item) in list.iter().enumerate() {
            let value = as_str(item, &format!("{oat}[{k}]"))?;
            let n = value.chars().count();
            if n == 0 || n > MAX_OPERATOR_VALUE_CHARS {
                return Err(invalid(format!(
                    "{oat}[{k}]: values must be 1 to {MAX_OPERATOR_VALUE_CHARS} characters, got {n}"
                )));
            }
            values.push(value.to_string());
        }
        conditions.push(Condition { op, values });
    }
    if conditions.is_empty() {
        return Err(invalid(format!(
            "{at}: no operator; give one of Equals, StartsWith, EndsWith, NotEquals, \
             NotStartsWith, NotEndsWith"
        )));
    }
    // Operators each field accepts.
    let equals_only = matches!(
        field,
        Field::EventCategory | Field::ReadOnly | Field::ResourcesType | Field::ErrorCode
    );
    for c in &conditions {
        let allowed = if equals_only {
            c.op == Op::Equals
        } else if field == Field::SessionCredentialFromConsole {
            matches!(c.op, Op::Equals | Op::NotEquals)
        } else {
            true
        };
        if !allowed {
            let only = if equals_only {
                "Equals"
            } else {
                "Equals or NotEquals"
            };
            return Err(invalid(format!(
                "{at}: {name} accepts only the {only} operator in CloudTrail"
            )));
        }
        for v in &c.values {
            let ok = match field {
                Field::ReadOnly | Field::SessionCredentialFromConsole => {
                    v == "true" || v == "false"
                }
                Field::ErrorCode => v == "VpceAccessDenied",
                Field::ResourcesType => is_resource_type(v),
                Field::EventCategory => {
                    matches!(
                        v.as_str(),
                        "Management" | "Data" | "NetworkActivity" | "Insight"
                    )
                }
                _ => true,
            };
            if !ok {
                let expected = match field {
                    Field::ReadOnly | Field::SessionCredentialFromConsole => {
                        "the string \"true\" or \"false\""
                    }
                    Field::ErrorCode => {
                        "\"VpceAccessDenied\" (the only errorCode CloudTrail selects on)"
                    }
                    Field::ResourcesType => "a resource type like AWS::S3::Object",
                    _ => "Management, Data, NetworkActivity or Insight",
                };
                return Err(invalid(format!("{at}: {v:?} is not {expected}")));
            }
        }
    }
    Ok(FieldCondition { field, conditions })
}

fn is_resource_type(v: &str) -> bool {
    let parts: Vec<&str> = v.split("::").collect();
    parts.len() == 3
        && parts[0] == "AWS"
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn compile_advanced(
    fields: Vec<FieldCondition>,
    at: &str,
) -> Result<AdvancedSelector, SelectorError> {
    let category_fc = fields
        .iter()
        .find(|f| f.field == Field::EventCategory)
        .ok_or_else(|| {
            invalid(format!(
                "{at}: no eventCategory field selector; CloudTrail requires eventCategory \
                 Equals Management, Data, NetworkActivity or Insight in every selector"
            ))
        })?;
    let values: Vec<&String> = category_fc
        .conditions
        .iter()
        .flat_map(|c| &c.values)
        .collect();
    if values.len() != 1 {
        return Err(invalid(format!(
            "{at}: eventCategory must Equal exactly one category, got {}; add a selector per \
             category",
            values.len()
        )));
    }
    let category = match values[0].as_str() {
        "Management" => Category::Management,
        "Data" => Category::Data,
        "NetworkActivity" => Category::NetworkActivity,
        _ => Category::Insight,
    };
    for fc in &fields {
        if !category.allowed_fields().contains(&fc.field) {
            let names: Vec<&str> = category.allowed_fields().iter().map(|f| f.name()).collect();
            return Err(invalid(format!(
                "{at}: field {} is not supported for eventCategory {} (CloudTrail allows {})",
                fc.field.name(),
                category.as_str(),
                names.join(", ")
            )));
        }
    }
    let has = |f: Field| fields.iter().any(|fc| fc.field == f);
    if category == Category::Data {
        if !has(Field::ResourcesType) {
            return Err(invalid(format!(
                "{at}: data event selectors require a resources.type field selector \
                 (Equals one resource type, e.g. AWS::S3::Object)"
            )));
        }
        let type_values: usize = fields
            .iter()
            .filter(|f| f.field == Field::ResourcesType)
            .flat_map(|f| &f.conditions)
            .map(|c| c.values.len())
            .sum();
        if type_values != 1 {
            return Err(invalid(format!(
                "{at}: resources.type must Equal exactly one resource type; to log more types, \
                 add another selector"
            )));
        }
    }
    if category == Category::NetworkActivity && !has(Field::EventSource) {
        return Err(invalid(format!(
            "{at}: network activity selectors require an eventSource field selector"
        )));
    }
    let (resource_conditions, event_conditions): (Vec<_>, Vec<_>) = fields
        .into_iter()
        .filter(|f| f.field != Field::EventCategory)
        .partition(|f| f.field.is_resource());
    Ok(AdvancedSelector {
        category,
        event_conditions,
        resource_conditions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mgmt(name: &str, read_only: bool) -> EventRecord {
        EventRecord {
            event_category: "Management".into(),
            event_source: "ec2.amazonaws.com".into(),
            event_name: name.into(),
            event_type: "AwsApiCall".into(),
            read_only,
            ..EventRecord::default()
        }
    }

    #[test]
    fn default_logs_management_only() {
        let s = Selectors::from_json("{}").expect("valid");
        assert!(s.is_default());
        assert!(mgmt("RunInstances", false).with_fields(|f| s.matches(f)));
        let mut data = mgmt("GetObject", true);
        data.event_category = "Data".into();
        assert!(!data.with_fields(|f| s.matches(f)));
    }

    #[test]
    fn messages_name_the_place() {
        let e = Selectors::from_json(
            r#"{"advanced_event_selectors":[{"FieldSelectors":[{"Field":"eventCategory","Equals":["Management"]},{"Field":"readOnly","StartsWith":["t"]}]}]}"#,
        )
        .expect_err("refused");
        let msg = e.to_string();
        assert!(
            msg.contains("advanced_event_selectors[0].FieldSelectors[1]"),
            "{msg}"
        );
        assert!(msg.contains("only the Equals operator"), "{msg}");
    }
}
