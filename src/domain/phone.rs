//! Phone numbers, parsed once at the edge into E.164 ("+919876543210").
//!
//! Webhooks and dialers spell the same number many ways: `+91 98765 43210`, `919876543210`,
//! `0091-98765-43210`. They must all be the same customer, or a denial recorded under one spelling
//! would not stop a call placed under another. So every number that enters callgate goes through
//! [`PhoneNumber::parse`], and everything past the edge holds only the normalised form.
//!
//! Numbers are international: with or without a leading `+` (or `00`), the digits must start with a
//! country code. A national-format number (leading trunk `0`) is refused rather than guessed at.

use std::fmt;

/// Fewest digits in a full international number (country code + subscriber number).
pub const MIN_DIGITS: usize = 7;
/// E.164 allows at most 15 digits.
pub const MAX_DIGITS: usize = 15;

/// A normalised international phone number. Holds only ASCII digits, no `+`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

/// Why a string is not a phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("is empty")]
    Empty,
    #[error("contains {0:?}, which is not part of a phone number")]
    InvalidCharacter(char),
    #[error("has {0} digits; an international number has at least {MIN_DIGITS}")]
    TooShort(usize),
    #[error("has {0} digits; E.164 allows at most {MAX_DIGITS}")]
    TooLong(usize),
    #[error("starts with 0; give the number in international form with its country code")]
    NoCountryCode,
    #[error("has a '+' that is not at the start")]
    MisplacedPlus,
}

impl PhoneNumber {
    /// Parses any common spelling of an international number.
    ///
    /// Separators (space, `-`, `.`, `(`, `)`, `/`) are ignored; a `+` before the first digit, or
    /// a leading `00`, is the international prefix.
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(PhoneError::Empty);
        }
        let mut digits = String::with_capacity(MAX_DIGITS);
        let mut has_plus = false;
        for ch in trimmed.chars() {
            match ch {
                '0'..='9' => digits.push(ch),
                // A '+' is the international prefix only before any digit: "(+91) ..." is fine.
                '+' if digits.is_empty() && !has_plus => has_plus = true,
                '+' => return Err(PhoneError::MisplacedPlus),
                ' ' | '-' | '.' | '(' | ')' | '/' | '\u{a0}' => {}
                other => return Err(PhoneError::InvalidCharacter(other)),
            }
            if digits.len() > MAX_DIGITS + 2 {
                // Stop early on absurd input; the exact count no longer matters.
                return Err(PhoneError::TooLong(digits.len()));
            }
        }
        let digits = match digits.strip_prefix("00") {
            Some(rest) if !has_plus => rest.to_owned(),
            _ => digits,
        };
        if digits.is_empty() {
            return Err(PhoneError::Empty);
        }
        if digits.starts_with('0') {
            return Err(PhoneError::NoCountryCode);
        }
        match digits.len() {
            n if n < MIN_DIGITS => Err(PhoneError::TooShort(n)),
            n if n > MAX_DIGITS => Err(PhoneError::TooLong(n)),
            _ => Ok(PhoneNumber(digits)),
        }
    }

    /// The digits without `+`, as used inside storage keys.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// Rebuilds a number from digits that were stored by callgate, checking them again.
    pub fn from_digits(digits: &str) -> Result<Self, PhoneError> {
        if digits.starts_with('+') {
            return Err(PhoneError::MisplacedPlus);
        }
        Self::parse(&format!("+{digits}"))
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.0)
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_number_normalise_to_the_same_value() {
        let cases = [
            "+919876543210",
            "919876543210",
            "+91 98765 43210",
            "+91-98765-43210",
            "(+91) 98765.43210",
            "0091 98765 43210",
            "  +919876543210  ",
        ];
        for input in cases {
            assert_eq!(
                PhoneNumber::parse(input).map(|p| p.to_string()),
                Ok("+919876543210".to_owned()),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn invalid_numbers_are_errors() {
        let cases: &[(&str, PhoneError)] = &[
            ("", PhoneError::Empty),
            ("   ", PhoneError::Empty),
            ("+", PhoneError::Empty),
            ("abc", PhoneError::InvalidCharacter('a')),
            ("+91 98765x43210", PhoneError::InvalidCharacter('x')),
            ("9198+76543210", PhoneError::MisplacedPlus),
            ("098765 43210", PhoneError::NoCountryCode),
            ("+0919876543210", PhoneError::NoCountryCode),
            ("12345", PhoneError::TooShort(5)),
            ("1234567890123456", PhoneError::TooLong(16)),
        ];
        for (input, want) in cases {
            assert_eq!(
                PhoneNumber::parse(input),
                Err(want.clone()),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn digits_round_trip() {
        let n = PhoneNumber::parse("+1 650 555 1234").unwrap();
        assert_eq!(n.digits(), "16505551234");
        assert_eq!(PhoneNumber::from_digits(n.digits()), Ok(n));
    }
}
