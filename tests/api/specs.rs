//! The published interface documents against the real server: `docs/openapi.yaml` (HTTP,
//! OpenAPI 3.1) and `docs/asyncapi.yaml` (MQTT, AsyncAPI 3.0).
//!
//! Every operation of the OpenAPI document is driven, its error answers included, and each real
//! answer is validated against the schema, media type and required headers the document gives
//! for its path, method and status; a status the document does not name fails. Every command
//! the test publishes is checked against the AsyncAPI outbox schemas (the good ones must pass,
//! the malformed ones must not), and every event it receives against the inbox schemas. Each
//! test ends by checking that it exercised everything its document names (operations and their
//! statuses; commands, events and error codes), so the documents and the server cannot drift
//! apart silently: a new endpoint, status, event or error code needs its case here.
//!
//! The schemas are validated by the `jsonschema` crate (draft 2020-12, which OpenAPI 3.1 and
//! these documents use), with `format` checked. A schema is compiled together with its
//! document's `components`, so its `#/components/...` references resolve in place.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use rumqttc::{MqttOptions, Packet, QoS, SubscribeReasonCode, Transport};
use serde_json::{json, Value};

use crate::helpers::*;

/// A user id no user has.
const NOBODY: &str = "0123456789abcdef01234567";

// ---------------------------------------------------------------------------------------------
// The documents.

/// A YAML document of `docs/`, as JSON, and the validators made from its schemas.
struct Document {
    name: &'static str,
    root: Value,
    validators: HashMap<String, jsonschema::Validator>,
}

impl Document {
    fn load(name: &'static str) -> Self {
        let path = format!("{}/docs/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let docs = <saphyr::Yaml as saphyr::LoadableYamlNode>::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(docs.len(), 1, "{path}: one YAML document");
        Self {
            name,
            root: yaml_to_json(&docs[0], name),
            validators: HashMap::new(),
        }
    }

    /// What a JSON reference inside this document (`#/...`) points at.
    fn pointer(&self, reference: &str) -> &Value {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{}: only local references: {reference}", self.name));
        self.root
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{}: {reference} leads nowhere", self.name))
    }

    /// The object `value` stands for, following `$ref`s (responses, parameters, headers,
    /// channels, messages: objects that a reference replaces whole).
    fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
            value = self.pointer(reference);
        }
        value
    }

    /// Why `instance` does not match `schema` (a schema object of this document), one line per
    /// error; empty when it matches.
    fn errors(&mut self, schema: &Value, instance: &Value) -> Vec<String> {
        let key = schema.to_string();
        if !self.validators.contains_key(&key) {
            let Value::Object(schema_object) = schema else {
                panic!("{}: a schema is an object here, not {schema}", self.name);
            };
            let mut root = schema_object.clone();
            root.insert(
                "$schema".into(),
                json!("https://json-schema.org/draft/2020-12/schema"),
            );
            // `#/components/schemas/...` then resolves within the schema itself.
            root.insert("components".into(), self.root["components"].clone());
            let validator = jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(&Value::Object(root))
                .unwrap_or_else(|e| panic!("{}: {schema} does not compile: {e}", self.name));
            self.validators.insert(key.clone(), validator);
        }
        self.validators[&key]
            .iter_errors(instance)
            .map(|e| format!("at {:?}: {e}", e.instance_path().as_str()))
            .collect()
    }

    fn assert_valid(&mut self, what: &str, schema: &Value, instance: &Value) {
        let errors = self.errors(schema, instance);
        assert!(
            errors.is_empty(),
            "{what} does not match docs/{}:\n  {}\n{what}: {instance:#}",
            self.name,
            errors.join("\n  ")
        );
    }

    /// Every `$ref` in the document leads somewhere.
    fn assert_references_resolve(&self) {
        fn walk(document: &Document, value: &Value) {
            match value {
                Value::Object(map) => {
                    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                        document.pointer(reference);
                    }
                    map.values().for_each(|v| walk(document, v));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(document, v)),
                _ => {}
            }
        }
        walk(self, &self.root);
    }
}

/// YAML (1.2 core schema) to JSON; the documents use neither anchors nor tags.
fn yaml_to_json(node: &saphyr::Yaml, name: &str) -> Value {
    use saphyr::{Scalar, Yaml};
    match node {
        Yaml::Value(Scalar::Null) => Value::Null,
        Yaml::Value(Scalar::Boolean(b)) => Value::Bool(*b),
        Yaml::Value(Scalar::Integer(i)) => json!(i),
        Yaml::Value(Scalar::FloatingPoint(f)) => json!(f.into_inner()),
        Yaml::Value(Scalar::String(s)) => Value::String(s.to_string()),
        Yaml::Sequence(items) => items.iter().map(|i| yaml_to_json(i, name)).collect(),
        Yaml::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let key = match yaml_to_json(k, name) {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    other => panic!("{name}: a key that is not a string: {other}"),
                };
                (key, yaml_to_json(v, name))
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
        other => panic!("{name}: no JSON for {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP against docs/openapi.yaml.

/// The methods an operation of the document may have (OpenAPI's names).
const METHODS: [&str; 5] = ["get", "put", "post", "patch", "delete"];

/// A request body.
enum Body {
    None,
    Json(Value),
    /// Bytes as they are (not JSON, or too large).
    Raw(Vec<u8>),
}

/// An HTTP answer, read whole.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    /// The body, parsed when it is JSON; `Null` otherwise.
    json: Value,
}

impl Reply {
    fn assert_status(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
    }

    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.json["error"]["code"].as_str()),
            (status, Some(code)),
            "{self:?}"
        );
    }
}

/// The OpenAPI document, and which (method, path, status) the test has seen.
struct OpenApi {
    doc: Document,
    seen: BTreeSet<(String, String, String)>,
}

impl OpenApi {
    fn load() -> Self {
        let doc = Document::load("openapi.yaml");
        let version = doc.root["openapi"].as_str().unwrap_or_default();
        assert!(version.starts_with("3.1."), "OpenAPI 3.1, not {version:?}");
        doc.assert_references_resolve();
        Self {
            doc,
            seen: BTreeSet::new(),
        }
    }

    /// Every operation as (method, path template, operation).
    fn operations(&self) -> Vec<(String, String, Value)> {
        let mut operations = Vec::new();
        for (template, item) in self.doc.root["paths"].as_object().expect("paths") {
            for method in METHODS {
                if let Some(operation) = item.get(method) {
                    operations.push((method.to_owned(), template.clone(), operation.clone()));
                }
            }
        }
        operations
    }

    /// The path template of the document that `path` is an instance of.
    fn template_of(&self, path: &str) -> String {
        let segments: Vec<&str> = path.split('/').collect();
        let paths = self.doc.root["paths"].as_object().expect("paths");
        let matches = |template: &str| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
        };
        if paths.contains_key(path) {
            return path.to_owned();
        }
        paths
            .keys()
            .find(|t| matches(t))
            .unwrap_or_else(|| panic!("{path} is in no path of docs/openapi.yaml"))
            .clone()
    }

    /// Sends a request, and checks the answer against the document: its status must be
    /// documented for the operation, and the answer must have that status's media type, body
    /// schema and required headers. A JSON body that gets a 2xx must match the request schema;
    /// one refused as `invalid_json` must not.
    async fn call(
        &mut self,
        app: &TestApp,
        method: &str,
        target: &str,
        token: Option<&str>,
        body: Body,
    ) -> Reply {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let template = self.template_of(path);
        let operation = self.doc.root["paths"][&template]
            .get(method)
            .unwrap_or_else(|| panic!("{method} {template} is not in docs/openapi.yaml"))
            .clone();
        let what = format!("{} {template}", method.to_uppercase());

        // Every query parameter sent is one the operation documents.
        let documented: Vec<Value> = operation["parameters"]
            .as_array()
            .map(|ps| ps.iter().map(|p| self.doc.resolve(p).clone()).collect())
            .unwrap_or_default();
        for (name, _) in reqwest::Url::parse(&format!("http://x/?{query}"))
            .unwrap()
            .query_pairs()
        {
            assert!(
                documented
                    .iter()
                    .any(|p| p["in"] == "query" && p["name"] == *name),
                "{what}: query parameter {name:?} is not documented"
            );
        }

        let mut request = app
            .client
            .request(method.to_uppercase().parse().unwrap(), app.url(target));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let sent_json = match body {
            Body::None => None,
            Body::Json(value) => {
                request = request.body(value.to_string());
                Some(value)
            }
            Body::Raw(bytes) => {
                request = request.body(bytes);
                None
            }
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        let reply = Reply {
            status,
            headers,
            json,
        };

        let documented = operation["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("{what}: status {status} is not documented: {text}"));
        let documented = self.doc.resolve(documented).clone();
        self.seen
            .insert((method.to_owned(), template.clone(), status.to_string()));
        let what = format!("{what} → {status}");

        for (name, header) in documented["headers"].as_object().into_iter().flatten() {
            let header = self.doc.resolve(header).clone();
            let value = reply.headers.get(name.as_str());
            if header["required"] == true {
                assert!(value.is_some(), "{what}: no {name} header: {reply:?}");
            }
            if let Some(value) = value {
                let value = value.to_str().unwrap();
                let value = match header["schema"]["type"].as_str() {
                    Some("integer") => value
                        .parse::<i64>()
                        .map(Value::from)
                        .unwrap_or_else(|_| panic!("{what}: {name}: {value:?} is no integer")),
                    _ => Value::from(value),
                };
                self.doc
                    .assert_valid(&format!("{what}: header {name}"), &header["schema"], &value);
            }
        }

        match documented["content"].as_object() {
            None => assert!(text.is_empty(), "{what}: a body where none is documented"),
            Some(content) => {
                let content_type = reply
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let media = content_type.split(';').next().unwrap().trim();
                let schema = &content.get(media).unwrap_or_else(|| {
                    panic!("{what}: media type {content_type:?} is not documented")
                })["schema"];
                let instance = if media == "application/json" {
                    assert!(!reply.json.is_null(), "{what}: not JSON: {text}");
                    reply.json.clone()
                } else {
                    Value::String(text)
                };
                self.doc.assert_valid(&what, schema, &instance);
            }
        }

        // The request schema says what the server takes.
        let request_schema =
            operation["requestBody"]["content"]["application/json"]["schema"].clone();
        if let (Some(sent), false) = (sent_json, request_schema.is_null()) {
            let errors = self.doc.errors(&request_schema, &sent);
            if (200..300).contains(&status) {
                assert!(
                    errors.is_empty(),
                    "{what}: the server took a body the document refuses: {sent}\n  {}",
                    errors.join("\n  ")
                );
            }
            if reply.json["error"]["code"] == "invalid_json" {
                assert!(
                    !errors.is_empty(),
                    "{what}: the server refused as invalid_json a body the document takes: {sent}"
                );
            }
        }
        reply
    }

    async fn get(&mut self, app: &TestApp, target: &str, token: Option<&str>) -> Reply {
        self.call(app, "get", target, token, Body::None).await
    }

    async fn post(
        &mut self,
        app: &TestApp,
        target: &str,
        token: Option<&str>,
        body: Value,
    ) -> Reply {
        self.call(app, "post", target, token, Body::Json(body))
            .await
    }

    async fn patch_me(&mut self, app: &TestApp, token: Option<&str>, body: Value) -> Reply {
        self.call(app, "patch", "/v1/me", token, Body::Json(body))
            .await
    }

    /// Logs a phone (E.164) in through `/v1/auth/otp` and `/v1/auth/verify`.
    async fn login_phone(&mut self, app: &TestApp, phone: &str) -> Tokens {
        let code = self.phone_code(app, "/v1/auth/otp", None, phone).await;
        let reply = self
            .post(
                app,
                "/v1/auth/verify",
                None,
                json!({"phone": phone, "code": code}),
            )
            .await;
        reply.assert_status(200);
        Tokens::from(&reply.json)
    }

    /// Logs an email in through `/v1/auth/otp` and `/v1/auth/verify`.
    async fn login_email(&mut self, app: &TestApp, email: &str) -> Tokens {
        let code = self.email_code(app, "/v1/auth/otp", None, email).await;
        let reply = self
            .post(
                app,
                "/v1/auth/verify",
                None,
                json!({"email": email, "code": code}),
            )
            .await;
        reply.assert_status(200);
        Tokens::from(&reply.json)
    }

    /// Asks `path` (`/v1/auth/otp` or `/v1/me/phone`) for a code to `phone` (E.164); the code.
    async fn phone_code(
        &mut self,
        app: &TestApp,
        path: &str,
        token: Option<&str>,
        phone: &str,
    ) -> String {
        let before = app.sms_count(phone);
        self.post(app, path, token, json!({"phone": phone}))
            .await
            .assert_status(202);
        app.twilio.code(phone, before + 1).await
    }

    /// Asks `path` (`/v1/auth/otp` or `/v1/me/email`) for a code to `email` (lower case).
    async fn email_code(
        &mut self,
        app: &TestApp,
        path: &str,
        token: Option<&str>,
        email: &str,
    ) -> String {
        let before = app.email_count(email);
        self.post(app, path, token, json!({"email": email}))
            .await
            .assert_status(202);
        app.email_code(email, before + 1).await
    }

    /// Every documented (method, path, status) the test has not seen.
    fn unseen(&self) -> Vec<String> {
        let mut unseen = Vec::new();
        for (method, template, operation) in self.operations() {
            for status in operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
            {
                let key = (method.clone(), template.clone(), status.clone());
                if !self.seen.contains(&key) {
                    unseen.push(format!("{} {template} → {status}", method.to_uppercase()));
                }
            }
        }
        unseen
    }
}

/// A code that is not `code`.
fn wrong(code: &str) -> String {
    format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000)
}

/// `sent_at` (RFC 3339) in Unix milliseconds.
fn unix_ms(sent_at: &Value) -> i128 {
    let at = time::OffsetDateTime::parse(
        sent_at.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    at.unix_timestamp_nanos() / 1_000_000
}

#[tokio::test]
async fn every_http_operation_answers_as_openapi_yaml_says() {
    let mut api = OpenApi::load();
    let app = TestApp::spawn_with(
        Options::default()
            .env("TIDINGS_LIMITS__OTP_RESEND_SECS", 0)
            .env("TIDINGS_LIMITS__OTP_PER_IP_PER_HOUR", 0)
            .env("TIDINGS_LIMITS__OTP_FAILURES_PER_IDENTITY_PER_DAY", 2)
            .env("TIDINGS_LIMITS__LOOKUPS_PER_USER_PER_MINUTE", LOOKUPS),
    )
    .await;
    api.get(&app, "/healthz", None).await.assert_status(200);
    api.get(&app, "/metrics", None).await.assert_status(200);

    let ann = api.login_phone(&app, "+14155550101").await;
    let bob = api.login_phone(&app, "+14155550102").await;
    let dan = api.login_email(&app, "dan@example.com").await;
    assert!(ann.new_user && bob.new_user && dan.new_user);
    login_errors(&mut api, &app).await;
    locked_identities(&mut api, &app, &ann).await;
    let ann = refresh_and_logout(&mut api, &app, ann).await;
    let cat = profiles(&mut api, &app, &ann, &bob).await;
    lookups(&mut api, &app, &ann, &bob, &dan).await;
    conversations(&mut api, &app, &ann, &bob, &cat).await;
    unsubscribe_link(&mut api, &app, &ann, &dan).await;
    shared_answers(&mut api, &app, &ann, &bob).await;
    storage_fault(&mut api).await;

    let unseen = api.unseen();
    assert!(
        unseen.is_empty(),
        "documented in docs/openapi.yaml but never seen here:\n  {}",
        unseen.join("\n  ")
    );
    eprintln!(
        "openapi.yaml: {} operations, {} (operation, status) pairs, all seen",
        api.operations().len(),
        api.seen.len()
    );
}

/// Lookups a minute, per user, in [`every_http_operation_answers_as_openapi_yaml_says`].
const LOOKUPS: usize = 8;

/// Bad identities and wrong codes at login.
async fn login_errors(api: &mut OpenApi, app: &TestApp) {
    let (otp, verify) = ("/v1/auth/otp", "/v1/auth/verify");
    api.post(app, otp, None, json!({"phone": "123"}))
        .await
        .assert_error(400, "invalid_phone");
    api.post(app, otp, None, json!({"email": "not-an-email"}))
        .await
        .assert_error(400, "invalid_email");
    let both = json!({"phone": "+14155550101", "email": "a@example.com"});
    api.post(app, otp, None, both)
        .await
        .assert_error(400, "invalid_json");
    api.post(app, verify, None, json!({"phone": "12", "code": "123456"}))
        .await
        .assert_error(400, "invalid_phone");
    api.post(app, verify, None, json!({"phone": "+14155550101"}))
        .await
        .assert_error(400, "invalid_json");
    let used = json!({"phone": "+14155550101", "code": "000000"});
    api.post(app, verify, None, used)
        .await
        .assert_error(401, "invalid_code");
}

/// An identity with two wrong codes today is locked (429 with Retry-After) wherever a code is
/// asked for or checked, for the rest of the day.
async fn locked_identities(api: &mut OpenApi, app: &TestApp, ann: &Tokens) {
    let (otp, verify) = ("/v1/auth/otp", "/v1/auth/verify");
    let a = Some(ann.access.as_str());
    let phone = "+14155550190";
    let code = api.phone_code(app, otp, None, phone).await;
    for _ in 0..2 {
        api.post(
            app,
            verify,
            None,
            json!({"phone": phone, "code": wrong(&code)}),
        )
        .await
        .assert_error(401, "invalid_code");
    }
    api.post(app, verify, None, json!({"phone": phone, "code": code}))
        .await
        .assert_error(429, "rate_limited");
    api.post(app, otp, None, json!({"phone": phone}))
        .await
        .assert_error(429, "rate_limited");
    api.post(app, "/v1/me/phone", a, json!({"phone": phone}))
        .await
        .assert_error(429, "rate_limited");
    api.post(
        app,
        "/v1/me/phone/verify",
        a,
        json!({"phone": phone, "code": code}),
    )
    .await
    .assert_error(429, "rate_limited");

    let email = "locked@example.com";
    let code = api.email_code(app, otp, None, email).await;
    for _ in 0..2 {
        api.post(
            app,
            verify,
            None,
            json!({"email": email, "code": wrong(&code)}),
        )
        .await
        .assert_error(401, "invalid_code");
    }
    api.post(app, "/v1/me/email", a, json!({"email": email}))
        .await
        .assert_error(429, "rate_limited");
    api.post(
        app,
        "/v1/me/email/verify",
        a,
        json!({"email": email, "code": code}),
    )
    .await
    .assert_error(429, "rate_limited");
}

/// Refresh rotates the refresh token; logout ends a session. Ann's new tokens.
async fn refresh_and_logout(api: &mut OpenApi, app: &TestApp, ann: Tokens) -> Tokens {
    let refresh = "/v1/auth/refresh";
    let rotated = api
        .post(app, refresh, None, json!({"refresh_token": ann.refresh}))
        .await;
    rotated.assert_status(200);
    assert_eq!(rotated.json["new_user"], false);
    api.post(app, refresh, None, json!({"refresh_token": ann.refresh}))
        .await
        .assert_error(401, "unauthorized");
    api.post(app, refresh, None, json!({"token": "x"}))
        .await
        .assert_error(400, "invalid_json");

    let second = api.login_phone(app, "+14155550101").await;
    assert!(!second.new_user);
    let token = Some(second.access.as_str());
    api.call(app, "post", "/v1/auth/logout", token, Body::None)
        .await
        .assert_status(204);
    api.get(app, "/v1/me", token)
        .await
        .assert_error(401, "unauthorized");
    Tokens::from(&rotated.json)
}

/// `/v1/me`: names, an email added (Bob) and a phone (Cat, who logs in by email here), codes
/// for another account's email and phone. Cat's tokens.
async fn profiles(api: &mut OpenApi, app: &TestApp, ann: &Tokens, bob: &Tokens) -> Tokens {
    let (a, b) = (Some(ann.access.as_str()), Some(bob.access.as_str()));
    let me = api.get(app, "/v1/me", a).await;
    assert_eq!(
        (&me.json["phone"], &me.json["email"]),
        (&json!("+14155550101"), &Value::Null)
    );
    let named = api.patch_me(app, a, json!({"display_name": " Ann "})).await;
    assert_eq!(named.json["display_name"], "Ann");
    api.patch_me(app, b, json!({"display_name": "Bob"}))
        .await
        .assert_status(200);
    api.patch_me(app, a, json!({"display_name": "   "}))
        .await
        .assert_error(400, "invalid_display_name");
    api.patch_me(app, a, json!({"nickname": "Annie"}))
        .await
        .assert_error(400, "invalid_json");

    let code = api
        .email_code(app, "/v1/me/email", b, "bob@example.com")
        .await;
    let body = json!({"email": "bob@example.com", "code": wrong(&code)});
    api.post(app, "/v1/me/email/verify", b, body)
        .await
        .assert_error(401, "invalid_code");
    let body = json!({"email": "Bob@Example.com", "code": code});
    let added = api.post(app, "/v1/me/email/verify", b, body).await;
    assert_eq!(added.json["email"], "bob@example.com", "{added:?}");

    let cat = api.login_email(app, "cat@example.com").await;
    let c = Some(cat.access.as_str());
    let before = app.sms_count("+14155550103");
    let asked = api
        .post(
            app,
            "/v1/me/phone",
            c,
            json!({"phone": "+1 (415) 555-0103"}),
        )
        .await;
    assert_eq!(asked.json["channel"], "sms", "{asked:?}");
    let code = app.twilio.code("+14155550103", before + 1).await;
    let body = json!({"phone": "+14155550103", "code": wrong(&code)});
    api.post(app, "/v1/me/phone/verify", c, body)
        .await
        .assert_error(401, "invalid_code");
    let body = json!({"phone": "+14155550103", "code": code});
    let added = api.post(app, "/v1/me/phone/verify", c, body).await;
    assert_eq!(
        (&added.json["phone"], &added.json["email"]),
        (&json!("+14155550103"), &json!("cat@example.com")),
        "{added:?}"
    );

    api.post(app, "/v1/me/email", a, json!({"email": "nope"}))
        .await
        .assert_error(400, "invalid_email");
    api.post(app, "/v1/me/phone", a, json!({"phone": "12"}))
        .await
        .assert_error(400, "invalid_phone");
    let body = json!({"email": "nope", "code": "123456"});
    api.post(app, "/v1/me/email/verify", a, body)
        .await
        .assert_error(400, "invalid_email");
    let body = json!({"phone": "12", "code": "123456"});
    api.post(app, "/v1/me/phone/verify", a, body)
        .await
        .assert_error(400, "invalid_phone");

    // Dan's email and Bob's phone belong to other accounts.
    let code = api
        .email_code(app, "/v1/me/email", a, "dan@example.com")
        .await;
    let body = json!({"email": "dan@example.com", "code": code});
    api.post(app, "/v1/me/email/verify", a, body)
        .await
        .assert_error(409, "already_taken");
    let code = api.phone_code(app, "/v1/me/phone", a, "+14155550102").await;
    let body = json!({"phone": "+14155550102", "code": code});
    api.post(app, "/v1/me/phone/verify", a, body)
        .await
        .assert_error(409, "already_taken");
    cat
}

/// Lookups: Ann makes six of her [`LOOKUPS`] a minute; Dan runs out.
async fn lookups(api: &mut OpenApi, app: &TestApp, ann: &Tokens, bob: &Tokens, dan: &Tokens) {
    let (a, d) = (Some(ann.access.as_str()), Some(dan.access.as_str()));
    let found = api
        .get(app, "/v1/users/lookup?phone=%2B14155550102", a)
        .await;
    assert_eq!(
        found.json,
        json!({"user_id": bob.user_id, "display_name": "Bob"})
    );
    let found = api
        .get(app, "/v1/users/lookup?email=dan%40example.com", a)
        .await;
    assert_eq!(found.json["user_id"], dan.user_id.as_str());
    for (query, code) in [
        ("", "invalid_query"),
        ("?phone=12", "invalid_phone"),
        ("?email=nope", "invalid_email"),
    ] {
        api.get(app, &format!("/v1/users/lookup{query}"), a)
            .await
            .assert_error(400, code);
    }
    api.get(app, "/v1/users/lookup?phone=%2B14155550999", a)
        .await
        .assert_error(404, "not_found");
    for _ in 0..=LOOKUPS {
        let reply = api
            .get(app, "/v1/users/lookup?phone=%2B14155550101", d)
            .await;
        if reply.status == 429 {
            return reply.assert_error(429, "rate_limited");
        }
    }
    panic!("more than {LOOKUPS} lookups a minute");
}

/// The conversations list and history: Ann writes to Bob three times, Bob reads two, then Cat
/// writes to Ann.
async fn conversations(api: &mut OpenApi, app: &TestApp, ann: &Tokens, bob: &Tokens, cat: &Tokens) {
    let (a, b) = (Some(ann.access.as_str()), Some(bob.access.as_str()));
    let mut ann_mqtt = app.mqtt_inbox(ann, "ann-phone").await;
    let mut bob_mqtt = app.mqtt_inbox(bob, "bob-phone").await;
    for i in 1..=3 {
        ann_mqtt
            .send(&bob.user_id, &format!("hi {i}"), &format!("a-{i}"))
            .await;
        assert_eq!(ann_mqtt.event().await["seq"], i);
        bob_mqtt.event().await;
    }
    let read = json!({"type": "read", "peer": ann.user_id, "seq": 2});
    bob_mqtt.publish_outbox(read.to_string()).await;
    assert_eq!(ann_mqtt.event().await["type"], "read");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cat_mqtt = app.mqtt_inbox(cat, "cat-phone").await;
    cat_mqtt.send(&ann.user_id, "hello Ann", "c-1").await;
    assert_eq!(ann_mqtt.event().await["body"], "hello Ann");

    let list = api.get(app, "/v1/conversations", a).await;
    let rows = list.json["conversations"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2, "{list:?}");
    assert_eq!(rows[0]["peer_id"], cat.user_id.as_str());
    assert_eq!(
        (
            &rows[1]["peer_id"],
            &rows[1]["peer_read_seq"],
            &rows[1]["read_seq"]
        ),
        (&json!(bob.user_id), &json!(2), &json!(0))
    );
    let first = api.get(app, "/v1/conversations?limit=1", a).await;
    assert_eq!(first.json["has_more"], true);
    let before = unix_ms(&first.json["conversations"][0]["last_message"]["sent_at"]);
    let next = api
        .get(
            app,
            &format!("/v1/conversations?before={before}&limit=1"),
            a,
        )
        .await;
    assert_eq!(
        next.json["conversations"][0]["peer_id"],
        bob.user_id.as_str()
    );
    let bobs = api.get(app, "/v1/conversations", b).await;
    let row = &bobs.json["conversations"][0];
    assert_eq!((&row["unread"], &row["read_seq"]), (&json!(1), &json!(2)));
    for query in ["limit=0", "before=yesterday"] {
        api.get(app, &format!("/v1/conversations?{query}"), a)
            .await
            .assert_error(400, "invalid_query");
    }

    let history = format!("/v1/conversations/{}/messages", bob.user_id);
    for (query, seqs, has_more) in [
        ("", vec![1, 2, 3], false),
        ("?limit=2", vec![2, 3], true),
        ("?after=1&limit=1", vec![2], true),
        ("?before=3&limit=5", vec![1, 2], false),
    ] {
        let page = api.get(app, &format!("{history}{query}"), a).await;
        let got: Vec<u64> = page.json["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            (got, &page.json["has_more"]),
            (seqs, &json!(has_more)),
            "{query}"
        );
    }
    for query in ["?limit=0", "?after=last"] {
        api.get(app, &format!("{history}{query}"), a)
            .await
            .assert_error(400, "invalid_query");
    }
    for peer in [NOBODY, "not-a-user"] {
        api.get(app, &format!("/v1/conversations/{peer}/messages"), a)
            .await
            .assert_error(404, "not_found");
    }
}

/// A forwarded email's unsubscribe link: Dan (offline) forwards by email.
async fn unsubscribe_link(api: &mut OpenApi, app: &TestApp, ann: &Tokens, dan: &Tokens) {
    let d = Some(dan.access.as_str());
    api.patch_me(app, d, json!({"forward_email": true}))
        .await
        .assert_status(200);
    let ann_mqtt = app.mqtt_inbox(ann, "ann-laptop").await;
    ann_mqtt.send(&dan.user_id, "lunch?", "a-dan").await;
    let token = unsubscribe_token(app).await;
    let link = format!("/v1/forwarding/unsubscribe?token={token}");
    api.get(app, &link, None).await.assert_status(200);
    let form = Body::Raw(b"List-Unsubscribe=One-Click".to_vec());
    let off = api.call(app, "post", &link, None, form).await;
    assert_eq!(off.json, json!({"forward_email": false}));
    assert_eq!(api.get(app, "/v1/me", d).await.json["forward_email"], false);
    let forged = "/v1/forwarding/unsubscribe?token=AAAA";
    api.call(app, "post", forged, None, Body::None)
        .await
        .assert_error(400, "invalid_token");
    api.get(app, forged, None)
        .await
        .assert_error(400, "invalid_token");
}

/// What every operation shares: no or a forged token (401), a malformed (400) or oversized
/// (413) JSON body; driven from the document's own list of operations.
async fn shared_answers(api: &mut OpenApi, app: &TestApp, ann: &Tokens, bob: &Tokens) {
    let a = Some(ann.access.as_str());
    let big = json!({"phone": "1".repeat(70 * 1024)})
        .to_string()
        .into_bytes();
    for (method, template, operation) in api.operations() {
        let target = template.replace("{peer_id}", &bob.user_id);
        if operation["security"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
        {
            for token in [None, Some("e30.e30.forged")] {
                api.call(app, &method, &target, token, Body::None)
                    .await
                    .assert_error(401, "unauthorized");
            }
        }
        if !operation["requestBody"]["content"]["application/json"].is_null() {
            let broken = Body::Raw(br#"{"phone": "+1415"#.to_vec());
            api.call(app, &method, &target, a, broken)
                .await
                .assert_error(400, "invalid_json");
            api.call(app, &method, &target, a, Body::Raw(big.clone()))
                .await
                .assert_error(413, "payload_too_large");
        }
    }
}

/// A disk that refuses writes: 503 where the document says so.
async fn storage_fault(api: &mut OpenApi) {
    let app = TestApp::spawn().await;
    let ann = api.login_phone(&app, "+14155550101").await;
    let bob = api.login_phone(&app, "+14155550102").await;
    let mut bob_mqtt = app.mqtt_inbox(&bob, "bob").await;
    app.limit_file_size(Some(0));
    bob_mqtt.send(&ann.user_id, "lost?", "u-1").await;
    assert_eq!(bob_mqtt.event().await["code"], "unavailable");
    api.get(&app, "/healthz", None)
        .await
        .assert_error(503, "unavailable");
    let a = Some(ann.access.as_str());
    let history = format!("/v1/conversations/{}/messages", bob.user_id);
    for target in ["/v1/conversations", &history] {
        api.get(&app, target, a)
            .await
            .assert_error(503, "unavailable");
    }
}

/// The token of the unsubscribe link in the first forwarded email the console provider logged.
async fn unsubscribe_token(app: &TestApp) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let log = app.log();
        if let Some((_, rest)) = log.split_once("/v1/forwarding/unsubscribe?token=") {
            return rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no forwarded email in the log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT against docs/asyncapi.yaml.

/// The AsyncAPI document, and what the test has sent and received.
struct AsyncApi {
    doc: Document,
    /// Outbox messages sent, by name.
    sent: BTreeSet<String>,
    /// Inbox messages received, by name.
    received: BTreeSet<String>,
    /// The `code`s of the error events received.
    codes: BTreeSet<String>,
}

impl AsyncApi {
    fn load() -> Self {
        let doc = Document::load("asyncapi.yaml");
        assert_eq!(doc.root["asyncapi"], "3.0.0", "AsyncAPI 3.0");
        doc.assert_references_resolve();
        Self {
            doc,
            sent: BTreeSet::new(),
            received: BTreeSet::new(),
            codes: BTreeSet::new(),
        }
    }

    /// The topic of `channel` for `user`.
    fn topic(&self, channel: &str, user: &str) -> String {
        let address = self.doc.root["channels"][channel]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no channel {channel}"));
        address.replace("{user_id}", user)
    }

    /// The messages of `channel`: (name, the `type` their payload has, payload schema).
    fn messages(&self, channel: &str) -> Vec<(String, String, Value)> {
        let messages = self.doc.root["channels"][channel]["messages"]
            .as_object()
            .unwrap_or_else(|| panic!("no messages in channel {channel}"));
        messages
            .iter()
            .map(|(name, message)| {
                let payload = self.doc.resolve(message)["payload"].clone();
                let kind = self.doc.resolve(&payload)["properties"]["type"]["const"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{channel}/{name}: no type const"))
                    .to_owned();
                (name.clone(), kind, payload)
            })
            .collect()
    }

    /// The MQTT QoS the operation on `channel` has in its binding.
    fn qos(&self, channel: &str) -> u8 {
        let operations = self.doc.root["operations"].as_object().expect("operations");
        let reference = format!("#/channels/{channel}");
        let operation = operations
            .values()
            .find(|o| o["channel"]["$ref"] == reference.as_str())
            .unwrap_or_else(|| panic!("no operation on {channel}"));
        operation["bindings"]["mqtt"]["qos"].as_u64().unwrap() as u8
    }

    /// Connects as `user` with the document's credentials (username = user id, password =
    /// access token) and subscribes to the inbox at the operation's QoS; over WebSocket at the
    /// `ws` server's path when `ws` is given.
    async fn connect(&self, app: &TestApp, user: &Tokens, client_id: &str, ws: bool) -> Mqtt {
        let scheme = &self.doc.root["components"]["securitySchemes"]["accessToken"];
        assert_eq!(scheme["type"], "userPassword");
        let mut mqtt = if ws {
            let server = &self.doc.root["servers"]["ws"];
            assert_eq!(server["protocol"], "ws");
            let url = format!("ws://{}{}", app.ws, server["pathname"].as_str().unwrap());
            let mut options = MqttOptions::new(client_id, url, app.ws.port());
            options.set_transport(Transport::Ws);
            Mqtt::connect_with(options, &user.user_id, &user.access).await
        } else {
            Mqtt::connect(app.mqtt, &user.user_id, &user.access, client_id, true).await
        }
        .expect("MQTT connect");
        let inbox = self.topic("inbox", &user.user_id);
        assert_eq!(self.qos("inbox"), 1);
        assert_eq!(
            mqtt.subscribe(&inbox).await,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        mqtt.user_id = user.user_id.clone();
        mqtt
    }

    /// Publishes `command` to the user's outbox at the operation's QoS, after checking it
    /// against the outbox messages: `valid` says whether the document takes it.
    async fn publish(&mut self, mqtt: &Mqtt, command: &Value, valid: bool) {
        let kind = command["type"].as_str().unwrap_or_default();
        let mut matched = None;
        for (name, message_kind, payload) in self.messages("outbox") {
            if self.doc.errors(&payload, command).is_empty() {
                matched = Some(name);
            } else if valid && message_kind == kind {
                self.doc
                    .assert_valid(&format!("the {kind} command"), &payload, command);
            }
        }
        match (valid, matched) {
            (true, Some(name)) => {
                self.sent.insert(name);
            }
            (true, None) => panic!("{command} is no command of docs/asyncapi.yaml"),
            (false, Some(name)) => panic!("docs/asyncapi.yaml takes {command} as {name}"),
            (false, None) => {}
        }
        self.publish_raw(mqtt, command.to_string().into_bytes())
            .await;
    }

    async fn publish_raw(&self, mqtt: &Mqtt, payload: Vec<u8>) {
        let qos = match self.qos("outbox") {
            1 => QoS::AtLeastOnce,
            other => panic!("outbox QoS {other}"),
        };
        mqtt.client
            .publish(self.topic("outbox", &mqtt.user_id), qos, false, payload)
            .await
            .unwrap();
    }

    /// The next event on `mqtt`'s inbox, checked against the inbox message of its `type`, and
    /// its QoS against the binding (errors answered by the connection itself come at QoS 0).
    async fn event(&mut self, mqtt: &mut Mqtt) -> Value {
        let publish = loop {
            match mqtt.next_packet().await {
                Some(Packet::Publish(publish)) => break publish,
                Some(_) => {}
                None => panic!("connection closed while waiting for an event"),
            }
        };
        assert_eq!(publish.topic, self.topic("inbox", &mqtt.user_id));
        let event: Value = serde_json::from_slice(&publish.payload).expect("events are JSON");
        let kind = event["type"].as_str().unwrap_or_default().to_owned();
        let (name, _, payload) = self
            .messages("inbox")
            .into_iter()
            .find(|(_, k, _)| *k == kind)
            .unwrap_or_else(|| panic!("an event docs/asyncapi.yaml does not have: {event}"));
        self.doc
            .assert_valid(&format!("the {kind} event"), &payload, &event);
        let qos = publish.qos as u8;
        if kind == "error" {
            assert!(qos <= self.qos("inbox"), "{event} at QoS {qos}");
            self.codes
                .insert(event["code"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(qos, self.qos("inbox"), "{event}");
        }
        self.received.insert(name);
        event
    }

    /// The next `n` events on `mqtt`.
    async fn events(&mut self, mqtt: &mut Mqtt, n: usize) -> Vec<Value> {
        let mut events = Vec::new();
        for _ in 0..n {
            events.push(self.event(mqtt).await);
        }
        events
    }
}

#[tokio::test]
async fn mqtt_commands_and_events_are_as_asyncapi_yaml_says() {
    const SENDS: usize = 5;
    let mut spec = AsyncApi::load();
    let app = TestApp::spawn_with(
        Options::default().env("TIDINGS_LIMITS__SENDS_PER_USER_PER_MINUTE", SENDS),
    )
    .await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let cat = app.login("+14155550103").await;
    let eve = app.login("+14155550104").await;
    let mut ann_mqtt = spec.connect(&app, &ann, "ann-phone", false).await;
    let mut bob_mqtt = spec.connect(&app, &bob, "bob-browser", true).await;

    // A message: to the recipient, and back to the sender as its acknowledgement.
    let send = json!({"type": "send", "to": bob.user_id, "body": "hello", "client_msg_id": "c-1"});
    spec.publish(&ann_mqtt, &send, true).await;
    let at_bob = spec.event(&mut bob_mqtt).await;
    assert_eq!(
        (&at_bob["type"], &at_bob["body"]),
        (&json!("message"), &json!("hello"))
    );
    assert_eq!(spec.event(&mut ann_mqtt).await, at_bob);
    // A read marker, with the optional client_msg_id: both users are told.
    let read = json!({"type": "read", "peer": ann.user_id, "seq": 1, "client_msg_id": "r-1"});
    spec.publish(&bob_mqtt, &read, true).await;
    let receipt = spec.event(&mut ann_mqtt).await;
    assert_eq!(
        receipt,
        json!({"type": "read", "by": bob.user_id, "peer": ann.user_id, "seq": 1})
    );
    assert_eq!(spec.event(&mut bob_mqtt).await, receipt);

    // Refused commands: the document refuses the malformed ones too.
    let mut cat_mqtt = spec.connect(&app, &cat, "cat-phone", false).await;
    let to_ann = |body: &str, id: &str| json!({"type": "send", "to": ann.user_id, "body": body, "client_msg_id": id});
    let refused = [
        (json!({"type": "shout"}), false, "invalid_payload", None),
        (to_ann("", "e-1"), false, "invalid_payload", Some("e-1")),
        (
            json!({"type": "send", "to": ann.user_id, "client_msg_id": "e-2"}),
            false,
            "invalid_payload",
            Some("e-2"),
        ),
        (
            to_ann(&"x".repeat(4097), "e-3"),
            false,
            "body_too_large",
            Some("e-3"),
        ),
        (
            json!({"type": "send", "to": NOBODY, "body": "hi", "client_msg_id": "e-4"}),
            true,
            "unknown_recipient",
            Some("e-4"),
        ),
        (
            json!({"type": "send", "to": cat.user_id, "body": "hi", "client_msg_id": "e-5"}),
            true,
            "unknown_recipient",
            Some("e-5"),
        ),
        (
            json!({"type": "read", "peer": ann.user_id, "seq": -1}),
            false,
            "invalid_payload",
            None,
        ),
    ];
    for (command, valid, _, _) in &refused {
        spec.publish(&cat_mqtt, command, *valid).await;
    }
    spec.publish_raw(&cat_mqtt, b"{not json".to_vec()).await;
    let mut errors = spec.events(&mut cat_mqtt, refused.len() + 1).await;
    for (command, _, code, client_msg_id) in &refused {
        let at = errors
            .iter()
            .position(|e| e["code"] == *code && e["client_msg_id"] == json!(client_msg_id))
            .unwrap_or_else(|| panic!("no {code} error for {command}: {errors:?}"));
        errors.remove(at);
    }
    assert_eq!(errors[0]["code"], "invalid_payload", "{errors:?}");
    // The same client_msg_id with another body.
    spec.publish(&cat_mqtt, &to_ann("original", "e-6"), true)
        .await;
    assert_eq!(spec.event(&mut cat_mqtt).await["body"], "original");
    assert_eq!(spec.event(&mut ann_mqtt).await["body"], "original");
    spec.publish(&cat_mqtt, &to_ann("changed", "e-6"), true)
        .await;
    let reused = spec.event(&mut cat_mqtt).await;
    assert_eq!(reused["code"], "client_msg_id_reused", "{reused}");

    // Past the send rate: rate_limited, with retry_after.
    let eve_mqtt = &mut spec.connect(&app, &eve, "eve-phone", false).await;
    for i in 0..=SENDS {
        spec.publish(eve_mqtt, &to_ann("again", &format!("f-{i}")), true)
            .await;
    }
    let events = spec.events(eve_mqtt, SENDS + 1).await;
    let limited: Vec<&Value> = events.iter().filter(|e| e["type"] == "error").collect();
    assert_eq!(limited.len(), 1, "{events:?}");
    assert_eq!(limited[0]["code"], "rate_limited");
    assert!(limited[0]["retry_after"].as_u64().unwrap() <= 60);

    // A disk that refuses writes: unavailable.
    let fault = TestApp::spawn().await;
    let f_ann = fault.login("+14155550101").await;
    let f_bob = fault.login("+14155550102").await;
    let mut f_mqtt = spec.connect(&fault, &f_bob, "bob", false).await;
    fault.limit_file_size(Some(0));
    let send =
        json!({"type": "send", "to": f_ann.user_id, "body": "lost?", "client_msg_id": "u-1"});
    spec.publish(&f_mqtt, &send, true).await;
    let unavailable = spec.event(&mut f_mqtt).await;
    assert_eq!(
        (&unavailable["code"], &unavailable["client_msg_id"]),
        (&json!("unavailable"), &json!("u-1"))
    );

    // Everything the document names was seen.
    let names = |channel: &str| -> BTreeSet<String> {
        spec.messages(channel)
            .into_iter()
            .map(|(n, _, _)| n)
            .collect()
    };
    assert_eq!(spec.sent, names("outbox"), "outbox messages sent");
    assert_eq!(spec.received, names("inbox"), "inbox messages received");
    let codes: BTreeSet<String> = spec.doc.root["components"]["schemas"]["ErrorEvent"]
        ["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(spec.codes, codes, "error codes received");
    eprintln!(
        "asyncapi.yaml: commands {:?}, events {:?}, error codes {:?}, all seen",
        spec.sent, spec.received, spec.codes
    );
}

/// "A `read` command may carry `client_msg_id`; its `error` event then carries it back" (this
/// test found that the server dropped it).
#[tokio::test]
async fn a_refused_read_command_gets_its_client_msg_id_back() {
    let mut spec = AsyncApi::load();
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let mut ann_mqtt = spec.connect(&app, &ann, "ann-phone", false).await;
    let read = json!({"type": "read", "peer": "nobody", "seq": 1, "client_msg_id": "r-bad"});
    spec.publish_raw(&ann_mqtt, read.to_string().into_bytes())
        .await;
    let error = spec.event(&mut ann_mqtt).await;
    assert_eq!(error["code"], "invalid_payload");
    assert_eq!(error["client_msg_id"], "r-bad", "{error}");
}

/// No server: the documents hang together, and their schemas reject what they should (so a
/// validation that passes above is not one that cannot fail).
#[test]
fn the_documents_agree_and_their_schemas_can_fail() {
    let mut http = OpenApi::load();
    let mut mqtt = AsyncApi::load();

    // operationIds are unique; every operation documents its statuses.
    let mut ids = BTreeSet::new();
    for (method, template, operation) in http.operations() {
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            ids.insert(id),
            "{method} {template}: a missing or repeated operationId"
        );
        assert!(!operation["responses"].as_object().unwrap().is_empty());
    }

    // A message is the same in history (HTTP) and as an event (MQTT): the schemas are equal
    // but for their prose.
    let schema = |doc: &Document, name: &str| {
        let mut schema = doc.root["components"]["schemas"][name].clone();
        for prose in ["description", "example"] {
            schema.as_object_mut().unwrap().remove(prose);
        }
        schema
    };
    for (http_name, mqtt_name) in [
        ("Message", "MessageEvent"),
        ("UserId", "UserId"),
        ("ClientMsgId", "ClientMsgId"),
    ] {
        assert_eq!(
            schema(&http.doc, http_name),
            schema(&mqtt.doc, mqtt_name),
            "openapi.yaml {http_name} and asyncapi.yaml {mqtt_name} differ"
        );
    }

    let message = json!({
        "type": "message", "id": "5c1f0e2a9b7d3c4e8f6a1b2c", "from": "a", "to": "b",
        "body": "hello", "seq": 7, "sent_at": "2026-11-24T10:00:00.123Z", "client_msg_id": "c-1"
    });
    let event = json!({"$ref": "#/components/schemas/MessageEvent"});
    assert!(mqtt.doc.errors(&event, &message).is_empty());
    let mut bad = message.clone();
    for (field, value) in [
        ("seq", json!("7")),
        ("seq", json!(0)),
        ("sent_at", json!("2026-11-24T10:00:00Z")),
        ("body", json!("")),
        ("client_msg_id", json!("x".repeat(65))),
    ] {
        bad[field] = value;
        assert!(!mqtt.doc.errors(&event, &bad).is_empty(), "{bad}");
        bad = message.clone();
    }
    bad.as_object_mut().unwrap().remove("client_msg_id");
    assert!(!mqtt.doc.errors(&event, &bad).is_empty());
    let error = json!({"$ref": "#/components/schemas/ErrorEvent"});
    let limited =
        json!({"type": "error", "client_msg_id": "c", "code": "rate_limited", "message": "m"});
    assert!(
        !mqtt.doc.errors(&error, &limited).is_empty(),
        "retry_after is required"
    );

    let me = json!({"$ref": "#/components/schemas/Me"});
    let good = json!({"user_id": "u", "phone": "+14155550101", "email": null,
        "display_name": null, "forward_sms": false, "forward_email": false});
    assert!(http.doc.errors(&me, &good).is_empty());
    for (field, value) in [
        ("phone", json!("+1 415 555 0101")),
        ("email", json!("Ann@Example.com")),
        ("forward_sms", json!("no")),
    ] {
        let mut bad = good.clone();
        bad[field] = value;
        assert!(!http.doc.errors(&me, &bad).is_empty(), "{bad}");
    }

    // Breaking a schema in the document breaks validation through its references.
    http.doc.root["components"]["schemas"]["Message"]["properties"]["seq"]["type"] =
        json!("string");
    let page = json!({"$ref": "#/components/schemas/MessagePage"});
    let history = json!({"messages": [message], "has_more": false});
    assert!(!http.doc.errors(&page, &history).is_empty());
}
