//! Identifiers: the one function that quotes them, and the naming policy.
//!
//! Every identifier that reaches SQL goes through [`quote_ident`]; values are always bound.
//!
//! Naming policy (documented in the crate README):
//! - by default a SQLite name whose lower-case form is a plain SQL identifier (ASCII letters,
//!   digits, `_`, `$`, not starting with a digit, at most 63 bytes) becomes that lower-case
//!   form — exactly what PostgreSQL makes of the name written unquoted, so hand-written and
//!   ORM SQL against the PostgreSQL schema keeps working (`UserAccounts` → `useraccounts`);
//!   reserved words follow the same rule (`Order` → `order`, which SQL must quote anyway);
//! - a name that needs quoting whatever its case (spaces, dashes, dots, non-ASCII letters,
//!   a leading digit) keeps its exact SQLite spelling: lower-casing it would not make it
//!   usable unquoted, only different from what the application calls it;
//! - with `keep_case` every name keeps its exact SQLite spelling.
//!
//! Names are always emitted quoted, so the policy decides only the spelling. Two SQLite
//! names that land on the same PostgreSQL name are an error (the shipper names both).

/// Quotes an identifier for PostgreSQL: wrapped in double quotes, inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for c in name.chars() {
        if c == '"' {
            s.push('"');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// The PostgreSQL name of a SQLite identifier under the naming policy.
pub fn target_name(sqlite_name: &str, keep_case: bool) -> String {
    if keep_case {
        return sqlite_name.to_string();
    }
    let lower = sqlite_name.to_ascii_lowercase();
    if is_plain_identifier(&lower) {
        lower
    } else {
        sqlite_name.to_string()
    }
}

/// Whether PostgreSQL reads `name` back unchanged when it is written unquoted (ignoring
/// reserved words, which the policy treats like any other plain name).
pub fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= 63
        && (first.is_ascii_lowercase() || first == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(qualified("public", "T"), "\"public\".\"T\"");
        assert_eq!(target_name("UserName", false), "username");
        assert_eq!(target_name("UserName", true), "UserName");
        assert_eq!(target_name("Order", false), "order");
        assert_eq!(target_name("_Tmp$1", false), "_tmp$1");
        // Names that need quoting anyway keep their spelling.
        assert_eq!(target_name("Order Items", false), "Order Items");
        assert_eq!(target_name("Straße", false), "Straße");
        assert_eq!(target_name("2fa-Codes", false), "2fa-Codes");
        assert_eq!(target_name("", false), "");
        assert!(!is_plain_identifier(&"a".repeat(64)));
    }
}
