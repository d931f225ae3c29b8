//! The client's side of claims-based security (CBS) as the Azure IoT device
//! SDKs speak it to a hub: a `put-token` request on a link to `$cbs`. The
//! device simulator sends it, and tests send it as the SDKs do.

use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};

/// The CBS node's address.
pub const CBS_NODE: &str = "$cbs";
/// The `type` of a SAS token put on `$cbs`.
pub const SAS_TOKEN_TYPE: &str = "servicebus.windows.net:sastoken";

/// A `put-token` request for `audience` (`{hub}/devices/{id}`) carrying
/// `token`, whose answer will carry `message_id` as its correlation-id.
pub fn put_token_request(
    message_id: &str,
    audience: &str,
    token: &str,
) -> Message<AmqpValue<Value>> {
    Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::String(message_id.into())),
            reply_to: Some("cbs".into()),
            to: Some(CBS_NODE.into()),
            ..Default::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert("operation", SimpleValue::String("put-token".into()))
                .insert("type", SimpleValue::String(SAS_TOKEN_TYPE.into()))
                .insert("name", SimpleValue::String(audience.into()))
                .build(),
        )
        .value(Value::String(token.into()))
        .build()
}
