//! Identifiers: the one function that quotes them, and the naming policy.
//!
//! Every identifier that reaches SQL goes through [`quote_ident`]; values are always bound.
//! Policy: a SQLite name becomes its lower-case form (so that unquoted SQL written against
//! the PostgreSQL schema by hand keeps working) unless `keep_case` is set; the name is
//! always emitted quoted, which makes names that need quoting (spaces, keywords, dashes)
//! work without a second rule. Two SQLite names that fold to the same name are an error.

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
        sqlite_name.to_string()
    } else {
        sqlite_name.to_lowercase()
    }
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
    }
}
