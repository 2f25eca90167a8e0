//! The texts forwarding sends: one SMS (one segment: 160 GSM-7 characters, or 70 UCS-2 code
//! units when the text needs them, cut with an ellipsis) and one plain-text email digest.

use crate::domain::Message;

/// GSM 03.38's basic character set: one septet each.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Its extension table: two septets each (an escape, then the character).
const GSM7_EXTENDED: &str = "^{}\\[~]|€\u{c}";

const GSM7_SEGMENT: usize = 160;
const UCS2_SEGMENT: usize = 70;

/// Septets `c` takes in GSM-7, `None` when GSM-7 cannot carry it.
fn gsm7_septets(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENDED.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// `text` cut to fit one SMS segment, with an ellipsis where it was cut.
pub fn one_segment(text: &str) -> String {
    if text.chars().all(|c| gsm7_septets(c).is_some()) {
        cut(text, GSM7_SEGMENT, "...", |c| gsm7_septets(c).unwrap_or(1))
    } else {
        cut(text, UCS2_SEGMENT, "…", char::len_utf16)
    }
}

/// `text` if its cost is at most `limit`, else its longest prefix that fits with `ellipsis`.
fn cut(text: &str, limit: usize, ellipsis: &str, cost: impl Fn(char) -> usize) -> String {
    let total: usize = text.chars().map(&cost).sum();
    if total <= limit {
        return text.to_owned();
    }
    let room = limit - ellipsis.chars().map(&cost).sum::<usize>();
    let mut used = 0;
    let mut out = String::new();
    for c in text.chars() {
        used += cost(c);
        if used > room {
            break;
        }
        out.push(c);
    }
    let kept = out.trim_end().len();
    out.truncate(kept);
    out.push_str(ellipsis);
    out
}

/// The SMS for what `sender` sent (oldest first): the message itself, or how many there are and
/// the latest.
pub fn sms(sender: &str, messages: &[&Message]) -> String {
    let latest = messages.last().map_or("", |m| m.body.as_str());
    let text = match messages.len() {
        1 => format!("{sender}: {latest}"),
        n => format!("{n} new messages from {sender}: {latest}"),
    };
    one_segment(&text)
}

/// The email digest: a subject naming the sender(s), and a body grouped by sender, each
/// message with its UTC time, then the unsubscribe link.
pub fn email(by_sender: &[(String, Vec<&Message>)], unsubscribe: &str) -> (String, String) {
    let count: usize = by_sender.iter().map(|(_, m)| m.len()).sum();
    let names: Vec<&str> = by_sender.iter().map(|(name, _)| name.as_str()).collect();
    let subject = match count {
        1 => format!("New message from {}", names[0]),
        n => format!("{n} new messages from {}", names.join(", ")),
    };
    let mut body = String::new();
    for (name, messages) in by_sender {
        body.push_str(&format!("{name}:\n"));
        for message in messages {
            body.push_str(&format!(
                "  [{}] {}\n",
                time_of(message.sent_at_ms),
                message.body.as_str()
            ));
        }
        body.push('\n');
    }
    body.push_str(
        "You get these emails because email forwarding is on for your account: messages that\n\
         none of your devices received in time are sent here.\n",
    );
    body.push_str(&format!("Stop these emails: {unsubscribe}\n"));
    (subject, body)
}

/// `2026-11-24 10:00 UTC`.
fn time_of(ms: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    at.format(&format).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_text_fits_160_septets() {
        let short = "Ann: see you at 5";
        assert_eq!(one_segment(short), short);
        let long = "a".repeat(200);
        let cut = one_segment(&long);
        assert_eq!(cut.len(), 160);
        assert!(cut.ends_with("..."));
        // Extension characters take two septets.
        let braces = "{".repeat(100);
        let cut = one_segment(&braces);
        assert_eq!(cut, format!("{}...", "{".repeat(78)));
    }

    #[test]
    fn other_text_fits_70_utf16_units() {
        let greek_and_more = "Привет ".repeat(20);
        let cut = one_segment(&greek_and_more);
        assert!(cut.ends_with('…'));
        assert!(cut.encode_utf16().count() <= 70, "{cut}");
        let emoji = "🙂".repeat(40);
        let cut = one_segment(&emoji);
        assert_eq!(cut.encode_utf16().count(), 69);
        let fits = "ok 🙂";
        assert_eq!(one_segment(fits), fits);
    }
}
