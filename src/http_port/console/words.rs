//! Consent in words, for people: "may be called until 2 Dec 2026 14:30 UTC, 6 days from now".
//!
//! Pure functions of a verdict and "now" (the app's `Clock`, read once per request by the
//! handler), so the wording is tested without a server. Times are shown in UTC, to the minute,
//! always with the zone, so two officers in different places read the same instant.

use chrono::{DateTime, Utc};

use crate::domain::{Choice, ConsentState, Decision, Verdict};

/// `2 Dec 2026 14:30 UTC`.
pub fn when(t: DateTime<Utc>) -> String {
    t.format("%-d %b %Y %H:%M UTC").to_string()
}

/// `2 Dec 2026 14:30:05.120 UTC`: the full precision the store keeps, for evidence.
pub fn precise(t: DateTime<Utc>) -> String {
    t.format("%-d %b %Y %H:%M:%S%.3f UTC").to_string()
}

/// `2026-12-02`.
pub fn day(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

/// How far `t` is from `now`: "6 days from now", "3 hours ago", "less than a minute ago".
/// Counts whole units, rounding towards zero, in the largest unit that is at least one.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    let future = secs > 0;
    let abs = secs.unsigned_abs();
    let amount = match abs {
        0..60 => "less than a minute".to_owned(),
        60..3600 => plural(abs / 60, "minute"),
        3600..86_400 => plural(abs / 3600, "hour"),
        _ => plural(abs / 86_400, "day"),
    };
    if future {
        format!("{amount} from now")
    } else {
        format!("{amount} ago")
    }
}

fn plural(n: u64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// A short name of a state, for badges and counts.
pub fn state_name(state: ConsentState) -> &'static str {
    match state {
        ConsentState::NoConsent => "No answer",
        ConsentState::GrantedPermanent => "Granted (permanent)",
        ConsentState::GrantedTemporary => "Granted (temporary)",
        ConsentState::Denied => "Denied",
        ConsentState::Expired => "Expired",
    }
}

/// The pair's current state in one sentence.
pub fn verdict_sentence(verdict: &Verdict, now: DateTime<Utc>) -> String {
    let decided =
        |d: &Decision| format!("{} ({})", when(d.decided_at), relative(d.decided_at, now));
    match (&verdict.state, &verdict.decision) {
        (ConsentState::GrantedTemporary, Some(d)) => match d.choice {
            Choice::GrantTemporary { expires_at } => format!(
                "May be called until {}, {}.",
                when(expires_at),
                relative(expires_at, now)
            ),
            _ => "May be called.".to_owned(),
        },
        (ConsentState::GrantedPermanent, Some(d)) => {
            format!(
                "May be called: permission granted without end on {}.",
                decided(d)
            )
        }
        (ConsentState::Denied, Some(d)) => {
            format!("May not be called: permission denied on {}.", decided(d))
        }
        (ConsentState::Expired, Some(d)) => match d.choice {
            Choice::GrantTemporary { expires_at } => format!(
                "May not be called: the temporary permission ended on {}, {}.",
                when(expires_at),
                relative(expires_at, now)
            ),
            _ => "May not be called: the permission ended.".to_owned(),
        },
        _ => "May not be called: this customer has never answered a permission request.".to_owned(),
    }
}

/// What one decision said, in words.
pub fn choice_words(choice: &Choice) -> String {
    match choice {
        Choice::GrantPermanent => "Granted, without end".to_owned(),
        Choice::GrantTemporary { expires_at } => {
            format!("Granted until {}", when(*expires_at))
        }
        Choice::Deny => "Denied".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Evidence, Pair, PhoneNumber, Source, evaluate};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn decision(choice: Choice, decided_at: &str) -> Decision {
        Decision {
            pair: Pair::new(
                PhoneNumber::parse("+919000000000").unwrap(),
                PhoneNumber::parse("+919876543210").unwrap(),
            ),
            choice,
            decided_at: t(decided_at),
            evidence: Evidence {
                source: Source::DoubleTick,
                message_id: "m".into(),
                paired_message_id: String::new(),
                response_source: String::new(),
                sender_customer_id: String::new(),
                body_sha256: [0; 32],
                stated_at: t(decided_at),
                stated_expires_at: None,
            },
            attribution: None,
            customer_name: None,
        }
    }

    #[test]
    fn relative_times_count_whole_units() {
        let now = t("2026-11-26T14:30:00Z");
        let cases = [
            ("2026-12-02T14:30:00Z", "6 days from now"),
            ("2026-12-02T14:29:59Z", "5 days from now"),
            ("2026-11-27T14:30:00Z", "1 day from now"),
            ("2026-11-26T16:30:00Z", "2 hours from now"),
            ("2026-11-26T14:31:00Z", "1 minute from now"),
            ("2026-11-26T14:30:30Z", "less than a minute from now"),
            ("2026-11-26T14:30:00Z", "less than a minute ago"),
            ("2026-11-26T14:00:00Z", "30 minutes ago"),
            ("2026-11-23T14:30:00Z", "3 days ago"),
        ];
        for (at, want) in cases {
            assert_eq!(relative(t(at), now), want, "{at}");
        }
    }

    #[test]
    fn each_state_reads_as_a_sentence() {
        let now = t("2026-11-26T14:30:00Z");
        let temporary = Choice::GrantTemporary {
            expires_at: t("2026-12-02T14:30:00Z"),
        };
        let cases = [
            (
                Some(decision(temporary, "2026-11-25T14:30:00Z")),
                "May be called until 2 Dec 2026 14:30 UTC, 6 days from now.",
            ),
            (
                Some(decision(Choice::GrantPermanent, "2026-11-25T14:30:00Z")),
                "May be called: permission granted without end on 25 Nov 2026 14:30 UTC \
                 (1 day ago).",
            ),
            (
                Some(decision(Choice::Deny, "2026-11-26T11:30:00Z")),
                "May not be called: permission denied on 26 Nov 2026 11:30 UTC (3 hours ago).",
            ),
            (
                None,
                "May not be called: this customer has never answered a permission request.",
            ),
        ];
        for (current, want) in cases {
            assert_eq!(verdict_sentence(&evaluate(current, now), now), want);
        }
        // The same temporary grant, a week later: expired.
        let later = t("2026-12-04T14:30:00Z");
        let expired = evaluate(Some(decision(temporary, "2026-11-25T14:30:00Z")), later);
        assert_eq!(
            verdict_sentence(&expired, later),
            "May not be called: the temporary permission ended on 2 Dec 2026 14:30 UTC, \
             2 days ago."
        );
    }

    #[test]
    fn evidence_times_keep_milliseconds() {
        assert_eq!(
            precise(t("2026-12-02T04:05:06.120Z")),
            "2 Dec 2026 04:05:06.120 UTC"
        );
        assert_eq!(day(t("2026-12-02T23:59:59Z")), "2026-12-02");
    }
}
