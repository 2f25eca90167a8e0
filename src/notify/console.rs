//! The `console` providers: print SMS and emails to the log. For development only: they log
//! what they send, login codes included.

use super::{BoxFuture, EmailSender, Mail, SendError, SmsSender};
use crate::domain::PhoneNumber;

pub struct ConsoleSms;

impl SmsSender for ConsoleSms {
    fn send<'a>(
        &'a self,
        to: &'a PhoneNumber,
        body: &'a str,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            tracing::info!(target: "tidings::console", "SMS to {to}: {body}");
            Ok(())
        })
    }
}

pub struct ConsoleEmail;

impl EmailSender for ConsoleEmail {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let Mail {
                to, subject, body, ..
            } = mail;
            tracing::info!(target: "tidings::console", "email to {to}: {subject}: {body}");
            Ok(())
        })
    }
}
