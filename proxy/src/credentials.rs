//! Credentials for the upstream proxy: parsed from a URL's userinfo or from
//! `--upstream-credentials-file`, turned into a `Proxy-Authorization: Basic`
//! header value, and never printed (`Debug` is redacted, there is no
//! `Display`).

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use http::HeaderValue;

/// Largest credentials file read (a line of `user:password`).
const MAX_FILE_LEN: u64 = 4096;

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot open credentials file {0}")]
    Open(PathBuf, #[source] io::Error),
    #[error("cannot read credentials file {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("credentials file {0} is not a regular file")]
    NotAFile(PathBuf),
    #[error(
        "credentials file {0} is accessible to other users (mode {1:04o}); \
         make it private first: chmod o-rwx {0}"
    )]
    WorldAccessible(PathBuf, u32),
    #[error("credentials file {0} is larger than {MAX_FILE_LEN} bytes; it should hold one line, user:password")]
    TooLarge(PathBuf),
    #[error("credentials file {0}: {1}")]
    Format(PathBuf, &'static str),
    #[error("credentials in the upstream URL: {0}")]
    Userinfo(&'static str),
}

impl Credentials {
    pub fn new(user: String, password: String) -> Self {
        Credentials { user, password }
    }

    /// The `Proxy-Authorization` value, marked sensitive so hyper never
    /// logs it.
    pub fn header_value(&self) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password));
        // Base64 output is always a valid header value.
        let mut value = HeaderValue::try_from(format!("Basic {token}"))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        value.set_sensitive(true);
        value
    }

    /// Parses a URL's userinfo (`user:password`, percent-encoded).
    pub fn from_userinfo(userinfo: &str) -> Result<Self, CredentialsError> {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| CredentialsError::Userinfo("not valid UTF-8 after percent-decoding"))
        };
        let user = decode(user)?;
        if user.is_empty() {
            return Err(CredentialsError::Userinfo("empty user name"));
        }
        Ok(Credentials::new(user, decode(password)?))
    }

    /// Parses the contents of a credentials file: one line `user:password`
    /// (the password may contain `:`), an optional final newline.
    pub fn parse_file_contents(text: &str) -> Result<Self, &'static str> {
        let line = text
            .strip_suffix('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .unwrap_or(text);
        if line.contains('\n') {
            return Err("expected exactly one line, user:password");
        }
        let (user, password) = line
            .split_once(':')
            .ok_or("expected user:password (no `:` found)")?;
        if user.is_empty() {
            return Err("empty user name before `:`");
        }
        if line.chars().any(|c| c.is_control()) {
            return Err("control characters are not allowed");
        }
        Ok(Credentials::new(user.to_owned(), password.to_owned()))
    }

    /// Reads a credentials file, refusing one that other users can read or
    /// write. The checks run on the opened file, so a swapped path cannot
    /// slip past them.
    pub fn read_file(path: &Path) -> Result<Self, CredentialsError> {
        let mut file = File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| CredentialsError::Open(path.to_owned(), e))?;
        let meta = file
            .metadata()
            .map_err(|e| CredentialsError::Read(path.to_owned(), e))?;
        if !meta.is_file() {
            return Err(CredentialsError::NotAFile(path.to_owned()));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o007 != 0 {
            return Err(CredentialsError::WorldAccessible(path.to_owned(), mode));
        }
        if meta.len() > MAX_FILE_LEN {
            return Err(CredentialsError::TooLarge(path.to_owned()));
        }
        let mut text = String::new();
        (&mut file)
            .take(MAX_FILE_LEN + 1)
            .read_to_string(&mut text)
            .map_err(|e| CredentialsError::Read(path.to_owned(), e))?;
        Credentials::parse_file_contents(&text)
            .map_err(|why| CredentialsError::Format(path.to_owned(), why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn file_contents() {
        let ok = |t: &str| Credentials::parse_file_contents(t).unwrap();
        assert_eq!(
            ok("alice:s3cret\n"),
            Credentials::new("alice".into(), "s3cret".into())
        );
        assert_eq!(
            ok("alice:s3cret"),
            Credentials::new("alice".into(), "s3cret".into())
        );
        assert_eq!(
            ok("alice:s3cret\r\n"),
            Credentials::new("alice".into(), "s3cret".into())
        );
        assert_eq!(
            ok("alice:a:b:c\n"),
            Credentials::new("alice".into(), "a:b:c".into())
        );
        assert_eq!(ok("alice:\n"), Credentials::new("alice".into(), "".into()));
        for bad in [
            "",
            "\n",
            "alice\n",
            ":pw\n",
            "a:b\nc:d\n",
            "a:b\n\n",
            "a:b\tc",
        ] {
            assert!(Credentials::parse_file_contents(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn userinfo_is_percent_decoded() {
        let c = Credentials::from_userinfo("us%40er:p%3Ass%25word").unwrap();
        assert_eq!(c, Credentials::new("us@er".into(), "p:ss%word".into()));
        assert_eq!(
            Credentials::from_userinfo("bob").unwrap(),
            Credentials::new("bob".into(), "".into())
        );
        assert!(Credentials::from_userinfo(":pw").is_err());
        assert!(Credentials::from_userinfo("a:%ff").is_err());
    }

    #[test]
    fn header_value_is_basic_and_sensitive() {
        let v = Credentials::new("Aladdin".into(), "open sesame".into()).header_value();
        // RFC 7617's example.
        assert_eq!(v.to_str().unwrap(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(v.is_sensitive());
    }

    #[test]
    fn debug_is_redacted() {
        let c = Credentials::new("alice".into(), "s3cret".into());
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("alice") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn file_permissions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(&path, "alice:s3cret\n").unwrap();
        for mode in [0o600, 0o640, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let c = Credentials::read_file(&path).unwrap();
            assert_eq!(c, Credentials::new("alice".into(), "s3cret".into()));
        }
        for mode in [0o644, 0o604, 0o602, 0o666] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Credentials::read_file(&path).unwrap_err();
            assert!(
                matches!(err, CredentialsError::WorldAccessible(_, m) if m == mode),
                "{mode:o}"
            );
            assert!(err.to_string().contains("chmod o-rwx"), "{err}");
        }
        assert!(matches!(
            Credentials::read_file(&dir.path().join("missing")),
            Err(CredentialsError::Open(..))
        ));
        assert!(matches!(
            Credentials::read_file(dir.path()),
            Err(CredentialsError::NotAFile(_))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "no-colon\n").unwrap();
        let err = Credentials::read_file(&path).unwrap_err();
        assert!(matches!(err, CredentialsError::Format(..)), "{err}");
    }
}
