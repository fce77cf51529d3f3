//! Phone numbers: any string is refused or normalised, never a panic; a normalised number parses
//! back to itself from both its printed form and its stored digits.
#![no_main]

use callgate::domain::PhoneNumber;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Ok(n) = PhoneNumber::parse(input) {
        assert_eq!(PhoneNumber::parse(&n.to_string()), Ok(n.clone()));
        assert_eq!(PhoneNumber::from_digits(n.digits()), Ok(n.clone()));
        assert!(n.digits().bytes().all(|b| b.is_ascii_digit()));
    }
    let _ = PhoneNumber::from_digits(input);
});
