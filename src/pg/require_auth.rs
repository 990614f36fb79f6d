//! Which of the server's authentication requests are answered
//! (`pg_require_auth`, libpq's `require_auth`), decided before anything
//! secret is sent.
//!
//! Unset, any request is answered except a cleartext password over a
//! connection without TLS: that would hand the password (or an IAM token)
//! to anyone on the path. A list answers only the methods it names, and
//! `none` in it is what allows a server that asks for nothing (trust).

use crate::conf::{AuthMethod, RequireAuth};

/// Whether to answer the server asking for `asked` (or, for
/// [`AuthMethod::None`], letting it in without asking) on a connection with
/// TLS up or not: `Err` is the sentence saying why not.
pub fn decide(policy: &RequireAuth, tls: bool, asked: AuthMethod) -> Result<(), String> {
    match policy.only {
        Some(allowed) if allowed.contains(asked) => Ok(()),
        Some(_) if asked == AuthMethod::None => {
            Err(format!("the server asked for no authentication, which {} does not allow (it does not name none)", policy.key))
        }
        Some(_) => Err(format!("the server asked for {} authentication, which {} does not allow", asked.name(), policy.key)),
        None if asked == AuthMethod::Password && !tls => Err(format!(
            "the server asked for a cleartext password over a connection without tls, which {} does not allow unless it names password",
            policy.key
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::AuthMethods;
    use AuthMethod::*;

    fn only(methods: &[AuthMethod]) -> RequireAuth {
        RequireAuth { only: Some(methods.iter().fold(AuthMethods::default(), |s, m| s.with(*m))), key: "pg_require_auth" }
    }

    const DEFAULT: RequireAuth = RequireAuth { only: Option::None, key: "pg_require_auth" };

    #[test]
    fn by_default_everything_but_a_cleartext_password_in_plain_text() {
        for tls in [false, true] {
            for asked in [Md5, ScramSha256, None] {
                assert_eq!(decide(&DEFAULT, tls, asked), Ok(()), "{asked:?} tls={tls}");
            }
        }
        // An IAM token travels as a cleartext password over TLS.
        assert_eq!(decide(&DEFAULT, true, Password), Ok(()));
        assert_eq!(
            decide(&DEFAULT, false, Password).unwrap_err(),
            "the server asked for a cleartext password over a connection without tls, which pg_require_auth does not allow unless it names password"
        );
    }

    #[test]
    fn a_list_answers_only_what_it_names() {
        let scram = only(&[ScramSha256]);
        assert_eq!(decide(&scram, true, ScramSha256), Ok(()));
        assert_eq!(decide(&scram, false, ScramSha256), Ok(()));
        assert_eq!(decide(&scram, true, Md5).unwrap_err(), "the server asked for md5 authentication, which pg_require_auth does not allow");
        assert_eq!(
            decide(&scram, true, Password).unwrap_err(),
            "the server asked for password authentication, which pg_require_auth does not allow"
        );
        assert_eq!(
            decide(&scram, true, None).unwrap_err(),
            "the server asked for no authentication, which pg_require_auth does not allow (it does not name none)"
        );
        // Naming password allows it without TLS too.
        assert_eq!(decide(&only(&[Password]), false, Password), Ok(()));
        // none: only a server that asks for nothing.
        let none = only(&[None]);
        assert_eq!(decide(&none, false, None), Ok(()));
        for asked in [Password, Md5, ScramSha256] {
            assert!(decide(&none, true, asked).is_err(), "{asked:?}");
        }
    }

    #[test]
    fn messages_name_the_key_of_the_side() {
        let ro = RequireAuth { only: Option::None, key: "pg_ro_require_auth" };
        assert!(decide(&ro, false, Password).unwrap_err().contains("pg_ro_require_auth"));
    }
}
