//! Property tests of the parsers of outside input: the outbox payload parser, phone numbers and
//! email addresses. Whatever comes in, they answer a value or an error, never a panic; what
//! they accept, they accept again unchanged (normalising is idempotent); and a well-formed
//! command comes out as it went in. (The gateway's framing has its own in `src/gateway/wire.rs`,
//! the HTTP bodies theirs in `tests/api/http.rs`.) Cases that once failed stay in
//! `tests/properties.proptest-regressions` and run first.

use proptest::prelude::*;
use serde_json::{json, Value};

use tidings::domain::{Email, PhoneNumber, UserId};
use tidings::payloads::{Command, ErrorCode};

/// JSON values of any shape, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|x| json!(x)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like commands, with each field right, wrong or missing.
fn command_like() -> impl Strategy<Value = Value> {
    let field = |right: BoxedStrategy<Value>| {
        prop_oneof![right, json_value().boxed()]
            .prop_map(Some)
            .boxed()
    };
    (
        prop::option::of(prop_oneof![
            Just(json!("send")),
            Just(json!("read")),
            json_value()
        ]),
        prop::option::weighted(0.8, field("[0-9a-f]{24}".prop_map(Value::String).boxed())),
        prop::option::weighted(0.8, field(".{0,50}".prop_map(Value::String).boxed())),
        prop::option::weighted(0.8, field("[ -~]{0,70}".prop_map(Value::String).boxed())),
        prop::option::weighted(0.5, field(any::<u64>().prop_map(|n| json!(n)).boxed())),
    )
        .prop_map(|(kind, to, body, cmid, seq)| {
            let mut object = serde_json::Map::new();
            let mut put = |name: &str, value: Option<Option<Value>>| {
                if let Some(Some(value)) = value {
                    object.insert(name.to_owned(), value);
                }
            };
            put("type", kind.map(Some));
            put("to", to.clone());
            put("peer", to);
            put("body", body);
            put("client_msg_id", cmid);
            put("seq", seq);
            Value::Object(object)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_are_a_command_or_an_error(payload in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Command::parse(&payload);
    }

    #[test]
    fn any_json_is_a_command_or_an_error(value in json_value()) {
        let _ = Command::parse(value.to_string().as_bytes());
    }

    #[test]
    fn command_shaped_objects_are_a_command_or_the_right_error(value in command_like()) {
        match Command::parse(value.to_string().as_bytes()) {
            Ok(Command::Send { to, body, client_msg_id }) => {
                prop_assert_eq!(value["type"].as_str(), Some("send"));
                prop_assert_eq!(to.to_string(), value["to"].as_str().unwrap());
                prop_assert_eq!(body.as_str(), value["body"].as_str().unwrap());
                prop_assert_eq!(client_msg_id.as_str(), value["client_msg_id"].as_str().unwrap());
            }
            Ok(Command::Read { peer, seq, client_msg_id }) => {
                prop_assert_eq!(value["type"].as_str(), Some("read"));
                prop_assert_eq!(peer.to_string(), value["peer"].as_str().unwrap());
                prop_assert_eq!(Some(seq), value["seq"].as_u64());
                prop_assert_eq!(client_msg_id.as_ref().map(|id| id.as_str()), value["client_msg_id"].as_str());
            }
            Err(error) => {
                // An error keeps the client_msg_id it could read, so the device can match it.
                if let (Some(id), ErrorCode::InvalidPayload | ErrorCode::BodyTooLarge | ErrorCode::UnknownRecipient)
                    = (value["client_msg_id"].as_str(), error.code)
                {
                    if value["type"] == "send" || value["type"] == "read" {
                        prop_assert_eq!(error.client_msg_id.as_deref(), Some(id));
                    }
                }
            }
        }
    }

    #[test]
    fn a_well_formed_send_comes_out_as_it_went_in(
        body in "\\PC{1,300}",
        client_msg_id in "[ -~]{1,64}",
    ) {
        let to = UserId::random();
        let payload = json!({"type": "send", "to": to.to_string(), "body": body, "client_msg_id": client_msg_id});
        match Command::parse(payload.to_string().as_bytes()) {
            Ok(Command::Send { to: parsed_to, body: parsed_body, client_msg_id: parsed_id }) => {
                prop_assert_eq!(parsed_to, to);
                prop_assert_eq!(parsed_body.as_str(), body.as_str());
                prop_assert_eq!(parsed_id.as_str(), client_msg_id.as_str());
            }
            other => prop_assert!(false, "refused: {:?}", other),
        }
    }

    #[test]
    fn bodies_are_counted_in_code_points(chars in prop::collection::vec(any::<char>(), 4090..4100)) {
        let body: String = chars.iter().collect();
        let payload = json!({"type": "send", "to": UserId::random().to_string(), "body": body, "client_msg_id": "c"});
        let parsed = Command::parse(payload.to_string().as_bytes());
        if chars.len() <= 4096 {
            prop_assert!(parsed.is_ok());
        } else {
            prop_assert_eq!(parsed.unwrap_err().code, ErrorCode::BodyTooLarge);
        }
    }

    #[test]
    fn phone_numbers_parse_or_fail_and_normalise_once(
        input in prop_oneof![".{0,40}", "\\+[0-9 ().-]{0,24}", "\\+1 ?[2-9][0-9]{2} ?[2-9][0-9]{6}"],
    ) {
        if let Ok(phone) = PhoneNumber::parse(&input) {
            let e164 = phone.as_str();
            prop_assert!(e164.starts_with('+') && e164[1..].bytes().all(|b| b.is_ascii_digit()), "{}", e164);
            prop_assert_eq!(PhoneNumber::parse(e164), Ok(phone.clone()));
        }
    }

    #[test]
    fn emails_parse_or_fail_and_normalise_once(
        input in prop_oneof![".{0,40}", "[A-Za-z0-9._%+-]{1,20}@[A-Za-z0-9-]{1,12}\\.[A-Za-z]{2,6}", " ?\\PC{0,10}@\\PC{0,10} ?"],
    ) {
        if let Ok(email) = Email::parse(&input) {
            let normal = email.as_str();
            prop_assert_eq!(normal.to_lowercase(), normal);
            prop_assert_eq!(Email::parse(normal), Ok(email.clone()));
        }
    }
}
