//! The builtin detector table.
//!
//! Each entry is a regex that finds *candidates* cheaply and an optional
//! validator that rejects look-alikes (a digit run with no Luhn-valid card
//! in it, a version string shaped like an IPv4 address). Several entries
//! may share a detector name: "secret" is a family of token shapes.
//!
//! Every builtin raises a request to `confidential`: personal data (e-mail
//! addresses, phone numbers, network addresses) must not leave the premises
//! any more than card numbers or keys do, unless the tenant decides so. A
//! tenant lowers one detector with a builtin rule row
//! (`gateway privacy rule add --builtin --name email --class internal
//! --tenant acme`).
//!
//! The patterns run on normalised text (see [`super::normalize`]), whose
//! digits are ASCII, accept any short run of separators between digit
//! groups (any whitespace, any ASCII punctuation, Unicode dashes and
//! bullets) and are case-insensitive where the format is. The separator
//! class is spelt out rather than "anything but a letter or digit": a
//! negated Unicode class repeated this often compiles past the regex size
//! limit. They err towards finding: a false finding keeps a request
//! on the premises, a missed one leaks it.
//!
//! Word boundaries are ASCII ones (`(?-u:\b)`): a letter outside ASCII
//! next to a token counts as a boundary, so `SchlüsseléAKIA…` is still
//! found (a Unicode `\b` sees no boundary between two letters). They also
//! keep the scan on the regex crate's DFA, which gives up on Unicode word
//! boundaries as soon as the text holds a byte outside ASCII and falls
//! back to a slower engine (the whole scan of such text took 205 ns a byte
//! with Unicode boundaries, 44 with ASCII ones; `benches/privacy_scan.rs`).

use std::net::Ipv6Addr;

use super::Class;

/// Decides whether a regex hit is a real finding. Gets the whole text and
/// the hit's byte range so it can look at the surrounding characters.
pub(super) type Validator = fn(text: &str, start: usize, end: usize) -> bool;

/// One row of the builtin table.
pub(super) struct Builtin {
    pub name: &'static str,
    pub pattern: &'static str,
    pub validate: Option<Validator>,
    pub class: Class,
}

/// Every builtin detector name, for validating operator rule rows.
pub const BUILTIN_NAMES: &[&str] = &[
    "card",
    "email",
    "iban",
    "ip_address",
    "marker",
    "media",
    "national_id",
    "phone",
    "secret",
];

/// A dotted IPv4 address: octets with up to two leading zeros, dots
/// written as they are, spaced, spelt or defanged (`. `, ` dot `, `[.]`,
/// `(.)`, `[dot]`). No word
/// boundaries: the validator looks at the neighbours, so an address glued
/// to a label (`ip_10.0.0.1`, `10.0.0.1a`) is still one.
const IPV4: &str = concat!(
    r"(?i)(?:0{0,2}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\s?\.\s?|\[\.\]|\(\.\)|\[dot\]|\(dot\)|\s+dot\s+)){3}",
    r"0{0,2}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
);

/// The words for a password in the languages the detectors know, as one
/// alternation: the labels (`password: …`) and the prose (`my password
/// is …`) take the same ones.
macro_rules! password_words {
    () => {
        concat!(
            r"p[a@4][s$5]{2}[ _-]?w[o0]rd|passwd|pass[ _-]?phrase|passwort|kennwort|contrase(?:ñ|n)a|senha|пароль|密码|パスワード",
            r"|wachtwoord|l(?:ö|o)senord|has(?:ł|l)o|salasana|(?:ş|s)ifre|parola|adgangskode|passord|heslo|jelsz(?:ó|o)",
            r"|κωδικός|συνθηματικό|סיסמה|סיסמא|كلمة المرور|كلمة السر|비밀번호|암호|mật khẩu|รหัสผ่าน|पासवर्ड|kata sandi",
        )
    };
}

/// An address's domain after its at sign, however that is written: labels
/// apart by dots as they are, spaced or spelt (`punto`, `punkt`, `[dot]`),
/// the last of two letters or more; or a comma or a space for the last dot
/// before a common domain (`bob@example,com`).
macro_rules! email_domain {
    () => {
        concat!(
            r"[\p{L}\p{N}-]+(?:\n[\p{L}\p{N}-]+)?(?:(?:\s*\.\s*|\s*[(\[{</]\s*(?:dot|\.|punto|point|punkt|ponto)\s*[)\]}>/]\s*",
            r"|\s+(?:dot|punto|punkt|ponto)\s+|[-_]dot[-_])[\p{L}\p{N}-]+(?:\n[\p{L}\p{N}-]+)?)*",
            r"(?:(?:\s*\.\s*|\s*[(\[{</]\s*(?:dot|\.|punto|point|punkt|ponto)\s*[)\]}>/]\s*",
            r"|\s+(?:dot|punto|punkt|ponto)\s+|[-_]dot[-_])\p{L}{2,}",
            r"|(?:\s*,\s*|\s+)(?:com|org|net|edu|gov|io|de|uk|fr)(?-u:\b))",
        )
    };
}

/// Whether a match lies outside a URL with its scheme: the run of text
/// without white space around it holds no `://`, nor `//:` (a URL written
/// backwards).
fn outside_a_url(text: &str, start: usize, end: usize) -> bool {
    let from = text[..start]
        .rfind(char::is_whitespace)
        .map_or(0, |at| at + 1);
    let to = text[end..]
        .find(char::is_whitespace)
        .map_or(text.len(), |at| end + at);
    let run = &text[from..to];
    !(run.contains("://") || run.contains("//:"))
}

pub(super) const BUILTINS: &[Builtin] = &[
    Builtin {
        // An address as written, or written to get past a filter: the at
        // sign spaced or spelt in brackets (`bob @ example.com`, `bob (at)
        // example [dot] com`, `[arroba]`, `(chez)`) or between hyphens
        // (`bob-at-example-dot-com`), dots spaced or spelt (`punto`,
        // `punkt`), in any case; a comma or a space for the last dot before
        // a common domain (`bob@example,com`). One line break may cut the
        // local part or a label: an address cut in two messages or fields,
        // which are scanned joined a line each (`bob@exam` and `ple.com`).
        name: "email",
        pattern: concat!(
            r"(?i)[\p{L}\p{N}._%+'-]+(?:\n[\p{L}\p{N}._%+'-]+)?",
            r"(?:\s*@+\s*|\s*[(\[{<]\s*(?:at|a|@|arroba|arobase|chez)\s*[)\]}>/]\s*|[-_](?:at|arroba)[-_])",
            email_domain!(),
        ),
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        // The at sign between slashes (`bob /at/ example.com`,
        // `john.doe/a/example.com`), but not in a URL with its scheme,
        // forwards or backwards, where `a` and `at` are path segments
        // (`https://github.com/a/blob/x.md`, `https://shop.example/at/de`).
        name: "email",
        pattern: concat!(
            r"(?i)[\p{L}\p{N}._%+'-]+(?:\n[\p{L}\p{N}._%+'-]+)?",
            r"\s*/\s*(?:at|a|@|arroba|arobase|chez)\s*/\s*",
            email_domain!(),
        ),
        validate: Some(outside_a_url),
        class: Class::Confidential,
    },
    Builtin {
        // The at sign spelt as a bare word (`bob at example dot com`,
        // `bob arroba example punto com`): the last dot must be spelt too,
        // or "look at example.com" would be an address.
        name: "email",
        pattern: concat!(
            r"(?i)[\p{L}\p{N}._%+'-]+\s+(?:at|arroba|arobase|chez)\s+",
            r"[\p{L}\p{N}-]+(?:(?:\s*\.\s*|\s*[(\[{</]\s*(?:dot|\.|punto|point|punkt|ponto)\s*[)\]}>/]\s*",
            r"|\s+(?:dot|punto|punkt|ponto)\s+)[\p{L}\p{N}-]+)*",
            r"(?:\s*[(\[{<]\s*(?:dot|\.|punto|point|punkt|ponto)\s*[)\]}>]\s*",
            r"|\s+(?:dot|punto|punkt|ponto)\s+)\p{L}{2,}",
        ),
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        // The at sign as a bare word after a local part with a dot or an
        // underscore in it (`john.doe at example.com`), which "look at
        // example.com" has not.
        name: "email",
        pattern: r"(?i)[\p{L}\p{N}]+[._][\p{L}\p{N}._%+-]*\s+(?:at|ät)\s+[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)*\.\p{L}{2,}",
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        // A domain written a character at a time between dots
        // (`bob@e.x.a.m.p.l.e.c.o.m`): joining its letters would take its
        // own dots away too, and its last label is one letter.
        name: "email",
        pattern: r"[\p{L}\p{N}_%+'-]@[\p{L}\p{N}](?:\.[\p{L}\p{N}]){4,}",
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        name: "phone",
        // International form (+ then 7-15 digits in groups), North American
        // forms, three groups of 3-3-4 digits, with any separators, and
        // national forms behind a trunk 0 (or the international 00).
        pattern: concat!(
            r"\+[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{0,2}[0-9]",
            r"(?:[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{0,3}[0-9]){6,14}",
            r"|\([0-9]{3}\)[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{0,3}[0-9]{3}",
            r"[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{0,3}[0-9]{4}",
            r"|[0-9]{3}[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{1,3}[0-9]{3}",
            r"[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{1,3}[0-9]{4}",
            // National forms behind a trunk 0, in groups (020 7946 0958,
            // 07700 900123, 01 23 45 67 89); the validator wants 10 to 12
            // digits.
            r"|(?-u:\b)0[0-9]{1,4}(?:[\s.\-\u{2010}-\u{2015}]{1,2}[0-9]{2,8}){1,4}(?-u:\b)",
            // A national number written without separators (07700900123),
            // a Chinese mobile number (13800138000).
            r"|(?-u:\b)0[1-9][0-9]{8,9}(?-u:\b)|(?-u:\b)1[3-9][0-9]{9}(?-u:\b)",
        ),
        validate: Some(phone_digits),
        class: Class::Confidential,
    },
    Builtin {
        name: "card",
        // A run of 13 or more digits with up to six separator characters
        // between any two (a line break and an indent, the cells of a
        // table); the validator tries every card-length window.
        pattern: r"[0-9](?:[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{0,6}[0-9]){12,}",
        validate: Some(card),
        class: Class::Confidential,
    },
    Builtin {
        name: "iban",
        pattern: r"(?i)[A-Z]{2}[0-9]{2}(?:[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{0,2}[A-Z0-9]){11,32}",
        validate: Some(iban),
        class: Class::Confidential,
    },
    Builtin {
        // A US social security number in its written form (3-2-4 digits,
        name: "national_id",
        // separated); the validator drops numbers never issued and digits
        // that continue a longer run (`SSN123-45-6789` is one).
        pattern: r"[0-9]{3}[\s\-\u{2010}-\u{2015}./_|:,*]{1,3}[0-9]{2}[\s\-\u{2010}-\u{2015}./_|:,*]{1,3}[0-9]{4}",
        validate: Some(ssn),
        class: Class::Confidential,
    },
    Builtin {
        // A document's classification banner, in capitals as banners are
        // written (words joined by up to three spaces, `_`, `.` or `-`, or
        // none, glued to digits or `_`; the usual digits for letters,
        // `CONF1DENTIAL`, `T0P SECRET`), or a few title-case ones;
        // "confidential" in lower case is prose. Spaced letters
        // (`C O N F …`) are joined before the detectors see them.
        name: "marker",
        pattern: concat!(
            r"(?:(?:STRICTLY|HIGHLY|COMPANY|BUSINESS|STRENG)[\s_.\-]{1,3})?",
            r"(?:C[O0]N-?F[I1l|!]-?D[E3]N-?(?:T[I1l|!]-?[A4@]L|T[I1l|!]-?[E3]L|C[I1l|!]-?[A4@]L)|VERTRAULICH|RISERVATO)",
            r"|(?:STRENG[\s_.\-]{1,3})?GEHEIM|(?:СОВЕРШЕННО[\s_.\-]{1,3})?СЕКРЕТНО|КОНФИДЕНЦИАЛЬНО",
            r"|机密|機密|绝密|絕密|極秘|社外秘|部外秘|CLASSIFIED|TS//SCI|SECRET[ \t]*:|SENSITIVE BUT UNCLASSIFIED",
            r"|INTERNAL(?:[\s_.\-]{1,3}USE)?[\s_.\-]{0,3}ONLY",
            r"|DO[\s_.\-]{0,3}NOT[\s_.\-]{0,3}(?:DISTRIBUTE|FORWARD|SHARE|COPY)",
            r"|NOT[\s_.\-]{0,3}FOR[\s_.\-]{0,3}(?:DISTRIBUTION|EXTERNAL[\s_.\-]{0,3}USE|PUBLIC[\s_.\-]{0,3}RELEASE)",
            r"|T[O0]P[\s_.\-]{0,3}S[E3]CR[E3][T7]|SECRET//|NOFORN",
            r"|PROPRIETARY|RESTRICTED|(?i:(?:strictly|highly|company|privileged (?:and|&)) confidential)",
            r"|(?i:classification\s*:\s*(?:confidential|secret|restricted|internal))",
            // A banner word in any case as a label (`Confidential: …`).
            r"|(?i:confidential|top[\s_.\-]{0,3}secret)[ \t]*:",
        ),
        validate: Some(not_glued_to_letters),
        class: Class::Confidential,
    },
    Builtin {
        // An SSN written without separators behind its label
        // (`SSN 219099999`); nine digits alone are any number.
        name: "national_id",
        pattern: r"(?i)(?-u:\b)(?:ssn|social security(?: number| no\.?)?)[\s:#=\x22'.-]{0,4}[0-9]{9}(?-u:\b)",
        validate: Some(ssn_after_label),
        class: Class::Confidential,
    },
    Builtin {
        name: "ip_address",
        pattern: IPV4,
        validate: Some(ipv4),
        class: Class::Confidential,
    },
    Builtin {
        // An address written as one number in a URL's host, as browsers
        // read it (`http://134744072/`, `http://0x8080808`).
        name: "ip_address",
        pattern: r"(?i)[a-z][a-z0-9+.-]*://(?:[^/@\s]*@)?(?:0x[0-9a-f]{1,8}|[0-9]{1,10})(?-u:\b)",
        validate: Some(numeric_host),
        class: Class::Confidential,
    },
    Builtin {
        // A private address (10/8, 172.16/12, 192.168/16) with other
        // separators than dots (`10-0-0-12`, `192:168:1:20`); a space or a
        // comma only in the two narrower ranges, where four numbers in a
        // row are seldom anything else.
        name: "ip_address",
        pattern: concat!(
            r"(?-u:\b)(?:10(?:[\-_/:*|]{1,2}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}",
            r"|(?:192[\-_/:*|, ]{1,2}168|172[\-_/:*|, ]{1,2}(?:1[6-9]|2[0-9]|3[01]))",
            r"(?:[\-_/:*|, ]{1,2}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){2})(?-u:\b)",
        ),
        validate: Some(apart_from_digits),
        class: Class::Confidential,
    },
    Builtin {
        // An address in a cloud host name (`ip-10-0-0-1.ec2.internal`).
        name: "ip_address",
        pattern: r"(?i)(?-u:\b)ip-(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])-){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?-u:\b)",
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        name: "ip_address",
        pattern: r"(?i)[0-9a-f:]*:[0-9a-f]*:[0-9a-f:.]*",
        validate: Some(ipv6),
        class: Class::Confidential,
    },
    Builtin {
        name: "secret",
        pattern: r"(?i)-----BEGIN [A-Z ]*PRIVATE KEY-----",
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        name: "secret",
        pattern: concat!(
            r"(?i)(?-u:\b)(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|(?-i:AKIA(?:[ \-_.+]?[0-9A-Z]){16})|gh[pousr]_[A-Za-z0-9]{36,}",
            r"|github_pat_[A-Za-z0-9_]{22,}|glpat-[A-Za-z0-9_-]{20,}|[sr]k_(?:live|test)_[A-Za-z0-9]{10,}",
            r"|hf_[A-Za-z0-9]{30,}|npm_[A-Za-z0-9]{36}|pypi-[A-Za-z0-9_-]{50,}|xapp-[A-Za-z0-9-]{10,}",
            r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|gw-[0-9a-f]{64})(?-u:\b)",
        ),
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        // A password written as an assignment: a key word at the end of a
        // name (`password: hunter2`, `DB_PASSWORD=…`, `"dbPassword": …`,
        // `<password>…`, `password -> …`), or a short one on its own
        // (`pw: …`, `PIN: …`, `CVV: …`); the validator drops placeholders
        // and words (`password: ********`, `password: required`).
        name: "secret",
        pattern: concat!(
            r"(?i)(?:(?:",
            password_words!(),
            r")|(?-u:\b)(?:pass|pw|pwd|pin|pin code|cvv|cvc|otp|mot[ _-]de[ _-]passe|mdp))",
            r"[\s\x22'>]*(?:[:=>]|->|=>)[\s\x22']*[^\s\x22',;<]{3,}",
        ),
        validate: Some(password_value),
        class: Class::Confidential,
    },
    Builtin {
        // A token or key written as an assignment (`api_key=…`,
        // `"accessToken": "…"`, `SECRET_KEY = '…'`, `Cookie: sid=…`); the
        // validator wants a value with a digit among letters, as keys
        // have and code (`token = None`, `max_tokens: 4096`) has not.
        name: "secret",
        pattern: concat!(
            r"(?i)(?:secret|token|credential|api[_-]?key|access[_-]?key|private[_-]?key|auth[_-]?token|authorization|cookie|session[_-]?id)",
            r"[\s\x22'>]*(?:[:=>]|->|=>)[\s\x22']*[^\s\x22',;<]{6,}",
        ),
        validate: Some(key_value),
        class: Class::Confidential,
    },
    Builtin {
        // The same in prose or on a command line (`my password is
        // hunter2`, `--password hunter2`); the validator wants a value
        // with a digit or a symbol ("the password is required" is prose).
        name: "secret",
        pattern: concat!(
            // Every password word of the labels above, a passcode, a PIN
            // or a key by what it opens, then within a few words a verb
            // `is` in the languages of those words.
            r"(?i)(?:",
            password_words!(),
            r"|mot[ _-]de[ _-]passe|(?-u:\b)(?:passcode|passkey|pin|(?:wi-?fi|wlan|wpa2?|network|encryption|secret|api|access|private|licen[cs]e|product|recovery)[ _-]?key)(?-u:\b))",
            r"[^.\n]{0,40}?(?:\s(?:is|was|ist|war|lautet|hei(?:ß|ss)t|est|était|es|era|è|e'|é|luidt|är|var|er|to|jest|brzmi|je|on|adalah|là)|['’]s)",
            r"\s*:?\s+[\x22']?[^\s\x22',;]{4,}",
            // A password word and its value with only a space between:
            // the value must hold a digit or a symbol.
            r"|(?-u:\b)(?:p[a@4][s$5]{2}[ _-]?w[o0]rd|passwd|pwd|pw|pass[ _-]?phrase)(?:\s+|\s\.\s)",
            r"[^\s\x22',;]*[0-9!#$%^&*@][^\s\x22',;]*",
            // `login admin:hunter2`.
            r"|(?-u:\b)(?:login|logon|creds|credentials)\s*[:=]?\s*[^\s:]+:[^\s]{3,}",
            r"|--(?:password|passwd|pass|token|api-key|secret|auth-token)\s+[^\s\x22'-][^\s\x22']{3,}",
        ),
        validate: Some(value_with_symbol),
        class: Class::Confidential,
    },
    Builtin {
        // Credentials on a command line or in a header: `mysql -phunter2`,
        // `curl -u admin:hunter2`, `Authorization: Bearer …`/`Basic …`.
        name: "secret",
        pattern: concat!(
            r"(?i)(?-u:\b)(?:mysql|mysqldump|mysqladmin|mariadb)(?-u:\b)[^\n]{0,80}?\s-p[^\s]{3,}",
            r"|(?-u:\b)(?:curl|wget|http)(?-u:\b)[^\n]{0,120}?\s(?:-u|--user)\s*[^\s:]+:[^\s]{3,}",
            r"|(?-u:\b)(?:bearer|basic)\s+[A-Za-z0-9+/=._~-]{8,}",
        ),
        validate: Some(value_with_symbol),
        class: Class::Confidential,
    },
    Builtin {
        // A password in a URL (`postgres://app:S3cret@db/x`,
        // `redis://:S3cret@cache`); the validator drops placeholders
        // (`user:pass@`, `user:${PASSWORD}@`).
        name: "secret",
        // (No counted repetitions: in the one pass, each count is as many
        // states, and noise built them at every letter.)
        pattern: r"(?i)(?-u:\b)[a-z][a-z0-9+.\-]*://[^\s/?#:@]*:[^\s/?#@]+@",
        validate: Some(url_password),
        class: Class::Confidential,
    },
    Builtin {
        name: "secret",
        pattern: r"(?-u:\b)eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        name: "secret",
        pattern: r"[A-Za-z0-9+/_=-]{32,}",
        validate: Some(high_entropy),
        class: Class::Confidential,
    },
    Builtin {
        // Content no detector can read (an image, audio or file part, a
        // remote image, a `data:` URL), which the extractor stands in for
        // with U+FFFC ([`super::extract::OPAQUE`]): unscanned, so it stays
        // on the premises unless the tenant lowers this detector.
        name: "media",
        pattern: "\u{fffc}",
        validate: None,
        class: Class::Confidential,
    },
];

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// 7 to 15 digits; behind the international prefix 00, a country code
/// and 7 to 15 digits in all.
/// Behind a trunk 0, 10 to 12, the length of national numbers, which a
/// date (`01.12.2024`) is not: counted group by group, so that a number
/// followed by another (`07700 900123 45 mins`) is still found. The digits
/// `0123456789` in a row are an alphabet, not a number.
fn phone_digits(text: &str, start: usize, end: usize) -> bool {
    let hit = &text[start..end];
    let d = digits(hit);
    if hit.starts_with("00") {
        // No country code starts with 0.
        return d.get(2).is_some_and(|&c| c != 0) && (9..=17).contains(&d.len());
    }
    let n = d.len();
    if !hit.starts_with('0') {
        return (7..=15).contains(&n);
    }
    if hit.starts_with("0123456789") {
        return false;
    }
    let mut n = 0;
    hit.split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .any(|group| {
            n += group.len();
            (10..=12).contains(&n)
        })
}

/// An SSN as issued: no area 000, 666 or 900-999, no group 00, no serial
/// 0000; not the middle of a longer run of digits.
fn ssn(text: &str, start: usize, end: usize) -> bool {
    if !apart_from_digits(text, start, end) {
        return false;
    }
    let d = digits(&text[start..end]);
    let area = d[0] * 100 + d[1] * 10 + d[2];
    area != 0 && area != 666 && area < 900 && d[3..5] != [0, 0] && d[5..] != [0, 0, 0, 0]
}

/// The nine digits at the end of a labelled SSN are one as issued.
fn ssn_after_label(text: &str, start: usize, end: usize) -> bool {
    end >= start + 9 && ssn(text, end - 9, end)
}

/// No digit right before `start` or right after `end`.
fn apart_from_digits(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
}

/// No ASCII letter right before `start` or right after `end`: a banner, not
/// a part of a word (`NONCONFIDENTIAL`).
fn not_glued_to_letters(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(|c| c.is_ascii_alphabetic())
        && !after.is_some_and(|c| c.is_ascii_alphabetic())
}

/// The value after a key word has a digit or a symbol in it (`hunter2`,
/// not `required`); a command-line flag's value is taken whatever it is.
fn value_with_symbol(text: &str, start: usize, end: usize) -> bool {
    let hit = &text[start..end];
    if hit.starts_with("--") {
        return true;
    }
    let value = last_value(hit);
    value.len() >= 4 && value.chars().any(|c| !c.is_alphabetic())
}

/// The value a hit ends with: its last word, quotes and the separator
/// (`=`, `:`, `>`) trimmed.
fn last_value(hit: &str) -> &str {
    let value = hit
        .rsplit(|c: char| c.is_whitespace() || matches!(c, ':' | '=' | '>'))
        .find(|w| !w.is_empty())
        .unwrap_or(hit);
    value.trim_matches(|c| c == '"' || c == '\'')
}

/// A placeholder rather than a value: `********`, `${DB_PASSWORD}`,
/// `$DB_PASSWORD`, `{{ secret }}`, `<password>`, `YOUR_API_KEY`,
/// `your-key-here`, `None`.
fn placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    value
        .chars()
        .all(|c| matches!(c, '*' | 'x' | 'X' | '.' | '•'))
        || ["${", "{{", "<", "%("].iter().any(|p| value.starts_with(p))
        || value.strip_prefix('$').is_some_and(|v| {
            !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        || [
            "your",
            "my_",
            "my-",
            "xxx",
            "none",
            "null",
            "nil",
            "undefined",
            "changeme",
            "example",
        ]
        .iter()
        .any(|p| lower.starts_with(p))
}

/// A password's value: at least four characters, not a placeholder, and
/// with a digit or a symbol, or eight letters or more (`hunter2`,
/// `letmeinnow`; not `required`, `weak` or `must`). A card code or a PIN is
/// all digits.
fn password_value(text: &str, start: usize, end: usize) -> bool {
    let value = last_value(&text[start..end]);
    let digits = value.bytes().filter(u8::is_ascii_digit).count();
    (digits >= 3 && digits == value.len())
        || (value.chars().count() >= 4
            && !placeholder(value)
            && (value.chars().any(|c| !c.is_alphabetic()) || value.chars().count() >= 8))
}

/// A URL's password (between its last colon and the at sign): not a
/// placeholder, nor a word that stands for one in examples (`pass`,
/// `password`, `secret`).
fn url_password(text: &str, start: usize, end: usize) -> bool {
    let hit = text[start..end].trim_end_matches('@');
    let value = hit.rsplit(':').next().unwrap_or(hit);
    !placeholder(value)
        && !["pass", "password", "passwd", "pwd", "secret", "pw"]
            .iter()
            .any(|word| value.eq_ignore_ascii_case(word))
}

/// A key's value: at least six characters, not a placeholder, with a
/// digit and a letter (keys and tokens mix them; identifiers, numbers and
/// expressions in code do not).
fn key_value(text: &str, start: usize, end: usize) -> bool {
    let value = last_value(&text[start..end]);
    value.len() >= 6
        && !placeholder(value)
        && value.bytes().any(|b| b.is_ascii_digit())
        && value.bytes().any(|b| b.is_ascii_alphabetic())
}

/// Some window of 13 to 19 consecutive digits starts as issuers' numbers
/// do (3 to 6: American Express, Visa, Mastercard, Discover and others;
/// 22-27: Mastercard, Mir; 81-82: UnionPay, RuPay), is written in groups
/// of two digits or more (a group cut by the window's ends may be
/// shorter), and passes Luhn. A window of one repeated digit is a
/// placeholder, not a card. The prefix and the groups keep timestamps,
/// tables of small numbers and other digit runs (`2024-01-15 10:30:00`,
/// `1,2\n2,4\n3,6…`) from passing for a card one time in ten.
fn card(text: &str, start: usize, end: usize) -> bool {
    // Each digit, and the index of the group it belongs to.
    let mut d = Vec::new();
    let mut group = Vec::new();
    for (g, run) in text[start..end]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|r| !r.is_empty())
        .enumerate()
    {
        for c in run.chars() {
            d.push(c.to_digit(10).unwrap_or(0));
            group.push(g);
        }
    }
    let grouped = |from: usize, len: usize| {
        let groups = &group[from..from + len];
        groups
            .chunk_by(|a, b| a == b)
            .skip(1)
            .collect::<Vec<_>>()
            .split_last()
            .is_none_or(|(_, inner)| inner.iter().all(|g| g.len() >= 2))
    };
    (13..=19.min(d.len())).any(|len| {
        (0..=d.len() - len).any(|i| {
            let w = &d[i..i + len];
            issuer(w) && luhn(w) && grouped(i, len)
        })
    })
}

/// Whether card numbers start with `w`'s first two digits.
fn issuer(w: &[u32]) -> bool {
    match w {
        [3..=6, ..] => true,
        [2, second, ..] => (2..=7).contains(second),
        [8, second, ..] => matches!(second, 1 | 2),
        _ => false,
    }
}

/// Whether the digits `d`, all of them, make a card number: 13 to 19 of
/// them, an issuer's first digits and Luhn's check.
pub(super) fn card_number(d: &[u32]) -> bool {
    (13..=19).contains(&d.len()) && issuer(d) && luhn(d)
}

fn luhn(d: &[u32]) -> bool {
    if d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| match (i % 2 == 1, x * 2) {
            (true, doubled) if doubled > 9 => doubled - 9,
            (true, doubled) => doubled,
            (false, _) => x,
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616 mod-97 on the letters and digits of the hit, at the length
/// of the country its first two letters name. The regex may swallow
/// characters after the IBAN's end, so only the country's length is
/// checked; and it may start before it (at `AB12` in `AB12, IBAN GB40…`, a
/// leftmost match that then covers the IBAN), so every start of the hit's
/// shape (a country, two digits) is tried. The country's length keeps hex
/// digests and codes (`AB12`, a SHA-256) from passing mod-97 one time in
/// 97 for each prefix.
fn iban(text: &str, start: usize, end: usize) -> bool {
    let compact: Vec<u8> = text[start..end]
        .bytes()
        .filter(u8::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let length = |country: &[u8]| {
        IBAN_LENGTHS
            .iter()
            .find(|(c, _)| c.as_bytes() == country)
            .map(|&(_, len)| len)
    };
    (0..compact.len().saturating_sub(14)).any(|from| {
        let rest = &compact[from..];
        if !rest[2..4].iter().all(u8::is_ascii_digit) {
            return false;
        }
        if iban_at_start(rest).is_some() {
            return true;
        }
        // In ROT13 an IBAN keeps its shape and its digits; its letters
        // are read back (`QR89 3704 …` is `DE89 3704 …`).
        // The country is turned in place; the whole is copied only for a
        // country that exists, to check its sum.
        let rot13 = super::disguise::rot13_byte;
        length(&[rot13(rest[0]), rot13(rest[1])]).is_some_and(|len| {
            rest.len() >= len
                && iban_checksum(&rest[..len].iter().map(|&c| rot13(c)).collect::<Vec<u8>>())
        })
    })
}

/// The length of the IBAN that `compact` (letters in capitals, no
/// separators) starts with, if it does: a country that issues them, and
/// its length's worth of characters that pass mod-97.
pub(super) fn iban_at_start(compact: &[u8]) -> Option<usize> {
    let country = compact.get(..2)?;
    let &(_, len) = IBAN_LENGTHS.iter().find(|(c, _)| c.as_bytes() == country)?;
    (compact.len() >= len && iban_checksum(&compact[..len])).then_some(len)
}

/// The two-letter codes of the countries that issue IBANs.
pub(super) fn iban_countries() -> impl Iterator<Item = &'static str> {
    IBAN_LENGTHS.iter().map(|&(country, _)| country)
}

/// The countries that issue IBANs and their IBANs' lengths (the SWIFT IBAN
/// registry, with the countries that use IBANs outside it).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AO", 25),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BF", 28),
    ("BG", 22),
    ("BH", 22),
    ("BI", 27),
    ("BJ", 28),
    ("BL", 27),
    ("BR", 29),
    ("BY", 28),
    ("CF", 27),
    ("CG", 27),
    ("CH", 21),
    ("CI", 28),
    ("CM", 27),
    ("CR", 22),
    ("CV", 25),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DJ", 27),
    ("DK", 18),
    ("DO", 28),
    ("DZ", 26),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FK", 18),
    ("FO", 18),
    ("FR", 27),
    ("GA", 27),
    ("GB", 22),
    ("GE", 22),
    ("GF", 27),
    ("GI", 23),
    ("GL", 18),
    ("GP", 27),
    ("GQ", 27),
    ("GR", 27),
    ("GT", 28),
    ("GW", 25),
    ("HN", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IR", 26),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KM", 27),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("LY", 25),
    ("MA", 28),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MF", 27),
    ("MG", 27),
    ("MK", 19),
    ("ML", 28),
    ("MN", 20),
    ("MQ", 27),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("MZ", 25),
    ("NC", 27),
    ("NE", 28),
    ("NI", 28),
    ("NL", 18),
    ("NO", 15),
    ("OM", 23),
    ("PF", 27),
    ("PK", 24),
    ("PL", 28),
    ("PM", 27),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RE", 27),
    ("RO", 24),
    ("RS", 22),
    ("RU", 33),
    ("SA", 24),
    ("SC", 31),
    ("SD", 18),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("SN", 28),
    ("SO", 23),
    ("ST", 25),
    ("SV", 28),
    ("TD", 27),
    ("TF", 27),
    ("TG", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("WF", 27),
    ("XK", 20),
    ("YE", 30),
    ("YT", 27),
];

fn iban_checksum(compact: &[u8]) -> bool {
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &c in tail.iter().chain(head) {
        let Some(v) = char::from(c).to_digit(36) else {
            return false;
        };
        rem = if v < 10 {
            (rem * 10 + v) % 97
        } else {
            (rem * 100 + v) % 97
        };
    }
    rem == 1
}

/// An IPv4 address that says something about a host: not the loopback
/// (`127.0.0.1`), unspecified (`0.0.0.0`) or broadcast address, which
/// every configuration and tutorial names; not inside a dotted run.
fn ipv4(text: &str, start: usize, end: usize) -> bool {
    let octets: Vec<u32> = text[start..end]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .filter_map(|g| g.parse().ok())
        .collect();
    let generic = matches!(
        octets.as_slice(),
        [127, ..] | [0, 0, 0, 0] | [255, 255, 255, 255]
    );
    !generic && not_in_dotted_run(text, start, end)
}

/// A URL's host that is one number (decimal or `0x` hex) naming an
/// address other than a loopback, unspecified or broadcast one, and not
/// the first label of a name (`http://1234567890.example.com`).
fn numeric_host(text: &str, start: usize, end: usize) -> bool {
    let hit = &text[start..end];
    let host = hit.rsplit(['/', '@']).next().unwrap_or(hit);
    let value = match host.strip_prefix("0x").or_else(|| host.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => host.parse::<u64>().ok(),
    };
    let next = text[end..].chars().next();
    let name_or_port = next.is_some_and(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_'));
    let address = value.and_then(|v| u32::try_from(v).ok());
    address.is_some_and(|v| !matches!(v >> 24, 0 | 127) && v != u32::MAX) && !name_or_port
}

/// Rejects `1.2.3.4` inside `1.2.3.4.5` (version strings, OIDs): an address
/// is not preceded or followed by a dot that continues the dotted run, nor
/// by a digit.
fn not_in_dotted_run(text: &str, start: usize, end: usize) -> bool {
    if !apart_from_digits(text, start, end) {
        return false;
    }
    let before = text[..start].chars().next_back();
    let mut after = text[end..].chars();
    let dotted_before = before == Some('.')
        && text[..start - 1]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_digit());
    let dotted_after =
        after.next() == Some('.') && after.next().is_some_and(|c| c.is_ascii_digit());
    !dotted_before && !dotted_after
}

/// The regex only finds runs of hex digits and colons; the standard parser
/// decides. Identifier-adjacent runs (`std::fmt`) and two-group shapes such
/// as `d::f` are rejected so Rust or C++ paths in prose do not fire.
///
/// A hit glued to a word on its left is read as a label and its colon
/// (`IPv6:2001:db8::1`, `ip:fe80::1`): what follows the hit's first colon
/// is the candidate.
fn ipv6(text: &str, start: usize, end: usize) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    if text[end..].chars().next().is_some_and(is_ident) {
        return false;
    }
    let mut candidate = &text[start..end];
    if text[..start].chars().next_back().is_some_and(is_ident) {
        let Some((_, after)) = candidate.split_once(':') else {
            return false;
        };
        candidate = after;
    }
    let candidate = candidate.trim_end_matches(['.', ':']);
    if candidate.parse::<Ipv6Addr>().is_err() {
        return false;
    }
    let groups: Vec<&str> = candidate.split(':').filter(|g| !g.is_empty()).collect();
    groups.len() >= 3 || groups.first().is_some_and(|g| g.len() >= 3)
}

/// Long tokens with high Shannon entropy and a mix of letters and digits.
/// The 4.2 bits/char threshold sits above pure hex (at most 4 bits), so
/// commit hashes and checksums in prose do not fire; hex-encoded secrets are
/// caught by the prefixed shapes above instead.
///
/// A long run is also tried in windows of [`ENTROPY_WINDOW`] characters: a
/// secret glued to padding (`-----…wJalrXUtnFEMI…`) is diluted as a whole.
fn high_entropy(text: &str, start: usize, end: usize) -> bool {
    let token = &text[start..end];
    if entropic(token) {
        return true;
    }
    token.len() > ENTROPY_WINDOW + 8
        && (0..=token.len() - ENTROPY_WINDOW)
            .step_by(8)
            .chain([token.len() - ENTROPY_WINDOW])
            .any(|i| entropic(&token[i..i + ENTROPY_WINDOW]))
}

/// How long a window of a long token [`high_entropy`] scores on its own.
const ENTROPY_WINDOW: usize = 40;

fn entropic(token: &str) -> bool {
    let has_digit = token.bytes().any(|b| b.is_ascii_digit());
    let has_upper = token.bytes().any(|b| b.is_ascii_uppercase());
    let has_lower = token.bytes().any(|b| b.is_ascii_lowercase());
    if !(has_digit && has_upper && has_lower) {
        return false;
    }
    let mut counts = [0u32; 256];
    for b in token.bytes() {
        counts[usize::from(b)] += 1;
    }
    let len = token.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum();
    entropy >= 4.2
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{classify, Class, RuleSet};

    fn fired(text: &str) -> Vec<String> {
        classify([text], Class::Public, None, RuleSet::builtins().unwrap()).fired
    }

    /// Texts and the detectors that fire on each.
    const CASES: &[(&str, &[&str])] = &[
        ("write to jane.doe@corp.example.com today", &["email"]),
        ("not an email: user@localhost", &[]),
        ("write to bob @ example.com", &["email"]),
        ("write to bob@example . com", &["email"]),
        ("write to bob (at) example (dot) com", &["email"]),
        ("write to bob[at]example[dot]co[dot]uk", &["email"]),
        ("write to bob {AT} example {DOT} com", &["email"]),
        ("write to bob <at> example.com", &["email"]),
        ("write to bob [@] example [.] com", &["email"]),
        ("write to bob@example(dot)com", &["email"]),
        ("write to bob at example dot com", &["email"]),
        ("write to bob AT example DOT org", &["email"]),
        ("write to bob-at-example-dot-com", &["email"]),
        ("write to bob_at_example_dot_com", &["email"]),
        ("escribe a bob arroba example punto com", &["email"]),
        ("écrire à bob (chez) example (point) fr", &["email"]),
        ("write to bob[arroba]example.com", &["email"]),
        ("write to bob@example,com", &["email"]),
        ("write to bob@example com", &["email"]),
        ("mail john.doe(a)example.com", &["email"]),
        ("mail john.doe /at/ example /dot/ com", &["email"]),
        ("mail john.doe@@example.com", &["email"]),
        ("mail john.doe/a/example.com", &["email"]),
        (
            "mail john.doe@example—com or 10—20—30—40",
            &["email", "ip_address"],
        ),
        ("see https://github.com/a/blob/main/README.md", &[]),
        (
            "see https://www.ikea.com/at/de.html or ftp://h.example/a/b.txt",
            &[],
        ),
        ("see https://x.example/a/b.html bob@example.com", &["email"]),
        ("mail john.doe at example.com", &["email"]),
        ("DATABASE_URL=postgres://app:S3cret@db/app", &["secret"]),
        ("cache at redis://:hunter2@cache:6379/0", &["secret"]),
        (
            "like https://user:pass@host or ftp://me:${FTP_PASSWORD}@files",
            &[],
        ),
        ("mail b.o.b@e.x.a.m.p.l.e.c.o.m", &["email"]),
        ("mail bob@e.x.a.m.p.l.e.c.o.m now", &["email"]),
        ("see obj@a.b and x@1.2.3", &[]),
        ("see the docs at example.com", &[]),
        ("aim at the target point blank", &[]),
        ("email me@home, or call", &[]),
        ("write to bob at mail.example (dot) com", &["email"]),
        ("look at example.com for the docs", &[]),
        ("the file is at src.main and the other at lib", &[]),
        ("meet at noon, then dinner at eight", &[]),
        ("see @mention and @team in the thread", &[]),
        ("call +1 415 555 0132", &["phone"]),
        ("call (415) 555-0132", &["phone"]),
        ("call 415-555-0132", &["phone"]),
        ("call 415 555 0132", &["phone"]),
        ("call 415/555/0132", &["phone"]),
        ("call +44 (20) 7946-0958", &["phone"]),
        ("call +33.1.23.45.67.89", &["phone"]),
        ("call 020 7946 0958", &["phone"]),
        ("call 07700 900123", &["phone"]),
        ("appelez le 01 23 45 67 89", &["phone"]),
        ("due 01.12.2024 at noon", &[]),
        ("call 0044 20 7946 0958", &["phone"]),
        ("call 00 44 20 7946 0958", &["phone"]),
        ("call 0151 23456789", &["phone"]),
        ("call 07700900123", &["phone"]),
        ("call 13800138000", &["phone"]),
        ("Phone: 07700 900123 45 mins", &["phone"]),
        ("digits 0123456789 in a row", &[]),
        ("ssn 123 - 45 - 6789", &["national_id"]),
        ("SSN123-45-6789", &["national_id"]),
        ("ssn 123/45/6789", &["national_id"]),
        ("part 1123-45-6789", &[]),
        ("ssn 078-05-1120 on file", &["national_id"]),
        ("ssn 078 05 1120 on file", &["national_id"]),
        ("never issued 666-05-1120 or 078-00-1120", &[]),
        ("SSN 078051120 on file", &["national_id"]),
        (
            "SSN 078|05|1120 or 078:05:1120 or 078,05,1120",
            &["national_id"],
        ),
        ("SSN: 2 1 9 0 9 9 9 9 9", &["national_id"]),
        ("SSN 666051120", &[]),
        ("order 078051120 shipped", &[]),
        ("CONFIDENTIAL: board minutes", &["marker"]),
        ("Privileged & Confidential", &["marker"]),
        ("TOP SECRET//NOFORN", &["marker"]),
        ("CONFIDENTIAL_REPORT_2024.pdf", &["marker"]),
        ("DO_NOT_DISTRIBUTE", &["marker"]),
        ("Classification: Internal", &["marker"]),
        ("Strictly Confidential", &["marker"]),
        ("VERTRAULICH", &["marker"]),
        ("NONCONFIDENTIAL", &[]),
        ("PRIVILEGED AND CONFIDENTIAL", &["marker"]),
        ("CONF1DENTIAL: board minutes", &["marker"]),
        ("C0NF!D3NT14L", &["marker"]),
        ("TOP  SECRET report", &["marker"]),
        ("T0P.SECRET", &["marker"]),
        ("TOPSECRET", &["marker"]),
        ("DO NOT  DISTRIBUTE", &["marker"]),
        ("C O N F I D E N T I A L", &["marker"]),
        ("T O P  S E C R E T", &["marker"]),
        ("C.O.N.F.I.D.E.N.T.I.A.L", &["marker"]),
        ("C-O-N-F-I-D-E-N-T-I-A-L", &["marker"]),
        // Cyrillic С and О, Greek Ι.
        ("\u{421}\u{41e}NF\u{399}DENTIAL", &["marker"]),
        ("it is a top secret recipe", &[]),
        ("this is confidential between us", &[]),
        ("password: hunter2!Secret", &["secret"]),
        // A password in prose: every word the labels take, in their
        // languages, and keys by what they open.
        ("my pass word is hunter2", &["secret"]),
        ("my p@ssword is hunter2", &["secret"]),
        ("the pass phrase is correct-horse-battery", &["secret"]),
        ("mein Passwort ist hunter2!", &["secret"]),
        ("mi contraseña es hunter2!", &["secret"]),
        ("la password è hunter2!", &["secret"]),
        ("a minha senha é hunter2!", &["secret"]),
        ("mijn wachtwoord is hunter2!", &["secret"]),
        ("moje hasło to hunter2!", &["secret"]),
        ("mon mot de passe est hunter2!", &["secret"]),
        ("my password's hunter2!", &["secret"]),
        ("the wifi key is Tr0ub4dor&3", &["secret"]),
        ("the recovery key was 4821-9911-0032", &["secret"]),
        ("pw hunter2!", &["secret"]),
        ("the password is required", &[]),
        ("the password to unlock it is on the card", &[]),
        ("the recovery key is stored offline", &[]),
        ("PIN 2 of the connector is grounded", &[]),
        ("the max token count is 4096", &[]),
        ("P A S S W O R D : hunter2!x", &["secret"]),
        ("p@ssword: hunter2!x", &["secret"]),
        ("pass word: hunter2!x", &["secret"]),
        ("PASSW0RD=hunter2!x", &["secret"]),
        ("password hunter2!x", &["secret"]),
        ("the password is: hunter2!x", &["secret"]),
        ("login admin:hunter2!x", &["secret"]),
        ("wachtwoord: hunter2!x", &["secret"]),
        ("비밀번호: hunter2!x", &["secret"]),
        ("password reset link, password manager", &[]),
        ("pass phrase = hunter2!x", &["secret"]),
        ("mot-de-passe: hunter2!x", &["secret"]),
        ("password\n\nhunter2!x", &["secret"]),
        ("PASSWORD \u{21d2} hunter2!x", &["secret"]),
        ("Confidential: merger plan", &["marker"]),
        ("top secret: launch", &["marker"]),
        ("CON-FI-DEN-TIAL", &["marker"]),
        ("GEHEIM - nur für den Dienstgebrauch", &["marker"]),
        ("СЕКРЕТНО: план", &["marker"]),
        ("机密：合并计划", &["marker"]),
        ("CLASSIFIED - EYES ONLY", &["marker"]),
        ("SECRET: launch codes", &["marker"]),
        ("the secret: use butter", &[]),
        ("p\u{430}ssword: hunter2!x", &["secret"]),
        ("set API_KEY=\"abcd1234\" first", &["secret"]),
        ("the password field is required", &[]),
        ("the password is required", &[]),
        ("DB_PASSWORD=hunter2", &["secret"]),
        ("PGPASSWORD=Tr0ub4dor&3", &["secret"]),
        (r#"{"dbPassword": "hunter2"}"#, &["secret"]),
        ("refreshToken: abcd1234", &["secret"]),
        ("<password>hunter2</password>", &["secret"]),
        ("pw: letmein1", &["secret"]),
        ("password: must be 8 characters", &[]),
        ("Password: ********", &[]),
        ("password: ${DB_PASSWORD}", &[]),
        ("password: $DB_PASSWORD", &[]),
        ("password: $ecret123", &["secret"]),
        ("max_tokens: 4096", &[]),
        ("maxTokens: 1024", &[]),
        ("token = None", &[]),
        ("const token = localStorage.getItem('token');", &[]),
        ("API_KEY=your-key-here", &[]),
        ("cvc: 123", &["secret"]),
        ("password -> hunter2", &["secret"]),
        ("Cookie: sessionid=8f7d6e5c4b3a2918", &["secret"]),
        ("PIN: 4821", &["secret"]),
        ("Passwort: geheim123", &["secret"]),
        ("my password is hunter2", &["secret"]),
        (
            "The wifi password for the office is Summer2024!",
            &["secret"],
        ),
        ("run it with --password letmein", &["secret"]),
        ("mysql -u root -phunter2 db", &["secret"]),
        ("curl -u admin:hunter2 https://x.example", &["secret"]),
        ("Authorization: Basic YWRtaW46aHVudGVyMg==", &["secret"]),
        ("Bearer abcd1234efgh5678", &["secret"]),
        ("a basic understanding of tokens", &[]),
        ("max_tokens: 32", &[]),
        ("glpat-abcdefghij0123456789", &["secret"]),
        ("stripe sk_live_abcdef123456", &["secret"]),
        ("write to jöhn.müller@beispiel.de", &["email"]),
        ("write to O'Brien@corp.example", &["email"]),
        ("pay with 4111 1111 1111 1111", &["card"]),
        ("pay with 5500-0000-0000-0004", &["card"]),
        ("pay with 378282246310005", &["card"]),
        // Every card-length window of a digit run is tried: this
        // 17-digit run fails Luhn, its last 16 digits pass.
        ("order 94111111111111111 shipped", &["card"]),
        // A window that passes Luhn but starts as no issuer's does.
        ("order 4111111111111112 shipped", &[]),
        ("at 2024-01-15 10:30:00 UTC", &[]),
        ("x,y\n1,2\n2,4\n3,6\n4,8\n5,10\n6,12\n7,14\n8,16", &[]),
        (
            "month,sales\n1,204,1\n2,680,20\n3,649,13\n4,472,79\n5,126,10",
            &[],
        ),
        ("ref 20240315120001 shipped", &[]),
        ("pay 4111.1111.1111.1111", &["card"]),
        ("pay 4111/1111/1111/1111", &["card"]),
        ("pay 4111_1111_1111_1111", &["card"]),
        ("pay 4111 - 1111 - 1111 - 1111", &["card"]),
        ("pay 4111\n1111\n1111\n1111", &["card"]),
        ("card:\n    4111\n    1111\n    1111\n    1111", &["card"]),
        ("pay 4111    1111    1111    1111", &["card"]),
        ("| 4111  | 1111  | 1111  | 1111  |", &["card"]),
        ("pay 4111\u{2212}1111\u{2212}1111\u{2212}1111", &["card"]),
        ("pay 4111\u{30fc}1111\u{30fc}1111\u{30fc}1111", &["card"]),
        ("pay 4111\u{3001}1111\u{3001}1111\u{3001}1111", &["card"]),
        ("pay 99 4111 1111 1111 1111 88 77", &["card"]),
        ("zeros 0000 0000 0000 0000", &[]),
        // An IBAN's digits are also a long digit run, in which other
        // detectors may find a card (a window with an issuer's prefix
        // that passes Luhn) or an international phone number (`0044
        // …`); all are confidential. A wrong checksum leaves only those.
        (
            "iban DE89 3704 0044 0532 0130 00 please",
            &["iban", "phone"],
        ),
        ("iban GB82WEST12345698765432", &["card", "iban"]),
        ("iban de89 3704 0044 0532 0130 00", &["iban", "phone"]),
        ("iban DE89.3704.0044.0532.0130.00", &["iban", "phone"]),
        ("myibanDE89370400440532013000xyz", &["iban"]),
        // A code of the same shape first: the match starts there and
        // covers the IBAN, which is still found.
        ("Invoice AB12, IBAN GB40 WEST 5260 1815 9083 01", &["iban"]),
        ("FY24 payment to GB40 WEST 5260 1815 9083 01", &["iban"]),
        ("iban DE88 3704 0044 0532 0130 00", &["phone"]),
        ("AB12 is a form code, see form XY34 as well", &[]),
        (
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            &[],
        ),
        ("host 192.168.10.4 is down", &["ip_address"]),
        ("version 1.2.3.4.5 released", &[]),
        ("octets 300.1.1.1 are invalid", &[]),
        ("host 192[.]168[.]1[.]10 is bad", &["ip_address"]),
        ("host 192.168.001.010", &["ip_address"]),
        ("ip_192.168.1.10", &["ip_address"]),
        ("host ip-10-0-0-1.ec2.internal", &["ip_address"]),
        ("GET http://134744072/ now", &["ip_address"]),
        ("GET https://user@0x0A000001:8443/x", &["ip_address"]),
        ("see http://1234567890.example.org/ or http://8080/", &[]),
        ("loopback http://2130706433/", &[]),
        ("host 10 . 0 . 0 . 1 is down", &["ip_address"]),
        ("host 8 dot 8 dot 8 dot 8", &["ip_address"]),
        ("host 10-0-0-12 and 10_0_0_12", &["ip_address"]),
        ("host 192:168:1:20", &["ip_address"]),
        ("host 192, 168, 1, 20", &["ip_address"]),
        ("scores 10 20 30 40 and 10, 0, 0, 12", &[]),
        ("release 2024-10-12", &[]),
        ("part 1192.168.1.10", &[]),
        ("listen on 0.0.0.0:8080 or 127.0.0.1", &[]),
        ("v6 2001:db8::8a2e:370:7334 up", &["ip_address"]),
        ("link fe80::1 up", &["ip_address"]),
        ("IPv6:2001:db8::8a2e:370:7334", &["ip_address"]),
        ("ip:fe80::1", &["ip_address"]),
        ("let v = Vec::new(); crate::ab::f", &[]),
        ("use std::fmt::Display and a::b", &[]),
        ("at 10:30:45 sharp", &[]),
        ("mac 00:1a:2b:3c:4d:5e", &[]),
        ("key sk-proj-abcdefghijklmnopqrstuvwx", &["secret"]),
        ("aws AKIAIOSFODNN7EXAMPLE here", &["secret"]),
        ("aws AKIA IOSF ODNN 7EXA MPLE here", &["secret"]),
        ("aws AKIA-IOSF-ODNN-7EXA-MPLE here", &["secret"]),
        ("aws AKIA_IOSF.ODNN+7EXA MPLE here", &["secret"]),
        ("Akia went to the store today", &[]),
        ("aws akiaiosfodnn7example here", &["secret"]),
        ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", &["secret"]),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", &["secret"]),
        ("-----begin private key-----", &["secret"]),
        ("key SK-PROJ-ABCDEFGHIJKLMNOPQRSTUVWX", &["secret"]),
        ("token Zx9Qp2LmN7vB4tR8wK1sY6hJ3gF5dC0aE", &["secret"]),
        // A secret glued to padding that dilutes it as a whole.
        (
            "k ------------------------------------------wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            &["secret"],
        ),
        (
            "sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            &[],
        ),
        ("a plain sentence about the weather in spring", &[]),
        // Glued to letters outside ASCII: a word boundary between
        // "é" and "A" is ASCII's, not Unicode's (where both are word
        // characters and the token would go unseen).
        ("SchlüsseléAKIAIOSFODNN7EXAMPLEü", &["secret"]),
        ("clésk-proj-abcdefghijklmnopqrstuvwx", &["secret"]),
        ("hôté192.168.10.4é", &["ip_address"]),
        (
            "jetonéeyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4",
            &["secret"],
        ),
    ];

    #[test]
    fn detectors_table() {
        for (text, expected) in CASES {
            let expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(fired(text), expected, "text: {text:?}");
        }
    }

    /// Every finding of the table is found in ROT13 too: what it hides
    /// (banners, labels, key prefixes, spelt at signs) is read with it
    /// taken off, an IBAN's letters are read back by its validator, and
    /// what it leaves (digits, at signs) is read as it is. Not an IPv6
    /// address's hex letters: in ROT13 they are not hex, and any letters
    /// between colons would pass for them. Written backwards, every banner,
    /// password and key is found (the findings that start from words), and
    /// every address and IBAN ([`super::super::reversed`]). Digits written
    /// backwards are read for card numbers only where the run is one card
    /// number: a phone number or a date turned is as often another phone
    /// number, and a card in a longer run turned is a window of it.
    #[test]
    fn every_finding_is_found_disguised() {
        use super::super::disguise::Disguise;
        for (text, expected) in CASES {
            for disguise in Disguise::ALL {
                let disguised = disguise.undo(text);
                let got = fired(&disguised);
                for detector in *expected {
                    let read = match disguise {
                        Disguise::Rot13 => *detector != "ip_address",
                        Disguise::Backwards => {
                            ["marker", "secret", "iban", "email"].contains(detector)
                        }
                    };
                    if read {
                        assert!(
                            got.iter().any(|f| f == detector),
                            "{disguise:?} {disguised:?} ({text:?}): {got:?}"
                        );
                    }
                }
            }
        }
        for text in [
            "moc tod elpmaxe ta bob ot etirw",
            "moc.elpmaxe ta eod.nhoj",
            "0211-50-870 NSS",
        ] {
            assert!(!fired(text).is_empty(), "{text}");
        }
    }

    /// Every row of the table that holds one of the shift gate's words is
    /// found with all its findings in a handful of shift ciphers, forwards
    /// and backwards.
    #[test]
    fn every_finding_is_found_shifted() {
        use super::super::shifted::{Alphabet, Shift, WORDS};
        let letters = |by, mirrored, backwards| Shift {
            alphabet: Alphabet::Letters,
            by,
            mirrored,
            backwards,
        };
        let printable = |by, backwards| Shift {
            alphabet: Alphabet::Printable,
            by,
            mirrored: false,
            backwards,
        };
        let shifts = [
            letters(1, false, false),
            letters(3, false, true),
            letters(25, false, false),
            letters(25, true, false),
            letters(7, true, true),
            printable(47, false),
            printable(47, true),
            printable(5, false),
        ];
        let mut rows = 0;
        for (text, expected) in CASES {
            let lower = text.to_lowercase();
            let held = WORDS.iter().any(|w| {
                w.split('_')
                    .any(|part| part.len() >= 6 && lower.contains(part))
            });
            if !held || expected.is_empty() {
                continue;
            }
            rows += 1;
            for shift in shifts {
                // What normalising makes of other characters (`⇒`) would
                // be moved by undoing a printable shift: these rows are
                // not in printable ASCII shifted.
                if shift.alphabet == Alphabet::Printable && !text.is_ascii() {
                    continue;
                }
                let shifted = shift.put_on(text);
                let got = fired(&shifted);
                for detector in *expected {
                    assert!(
                        got.iter().any(|f| f == detector),
                        "{shift:?} {shifted:?} ({text:?}): {got:?}"
                    );
                }
            }
        }
        assert!(rows >= 20, "{rows} rows hold a word");
    }

    /// Every row of the table that Morse can write (no `#`, `*`, brackets
    /// other than round ones, or letters outside ASCII) is found with all
    /// its findings in Morse, and with `·` and `—` for dot and dash. Morse
    /// has no case: a finding that the row gives in neither lower nor upper
    /// case (a token told from a hash by its mixed case) is not expected.
    #[test]
    fn every_finding_is_found_in_morse() {
        use super::super::morse::encode;
        let mut rows = 0;
        for (text, expected) in CASES {
            let Some(morse) = encode(text) else { continue };
            let mut cased = fired(&text.to_lowercase());
            cased.extend(fired(&text.to_uppercase()));
            let expected: Vec<&str> = expected
                .iter()
                .copied()
                .filter(|d| cased.iter().any(|f| f == d))
                .collect();
            if expected.is_empty() {
                continue;
            }
            rows += 1;
            let typeset = morse.replace('.', "·").replace('-', "—");
            for written in [&morse, &typeset] {
                let got = fired(written);
                for detector in &expected {
                    assert!(
                        got.iter().any(|f| f == detector),
                        "{written:?} ({text:?}): {got:?}"
                    );
                }
            }
        }
        assert!(rows >= 100, "{rows} rows in Morse");
    }

    /// Every row of the table that English Braille as read here can write
    /// is found with all its findings in Braille.
    #[test]
    fn every_finding_is_found_in_braille() {
        let mut rows = 0;
        for (text, expected) in CASES {
            let Some(written) = super::super::normalize::braille(text) else {
                continue;
            };
            if expected.is_empty() {
                continue;
            }
            rows += 1;
            let got = fired(&written);
            for detector in *expected {
                assert!(
                    got.iter().any(|f| f == detector),
                    "{written:?} ({text:?}): {got:?}"
                );
            }
        }
        assert!(rows >= 90, "{rows} rows in Braille");
    }

    #[test]
    fn every_builtin_is_confidential_by_default() {
        let rules = RuleSet::compile(&[]).unwrap();
        let cases = [
            ("a@b.io", "email"),
            ("call +1 415 555 0132", "phone"),
            ("10.0.0.1", "ip_address"),
            ("fe80::1", "ip_address"),
            ("4111 1111 1111 1111", "card"),
            ("GB82WEST12345698765432", "iban"),
            ("078-05-1120", "national_id"),
            ("STRICTLY CONFIDENTIAL", "marker"),
            ("AKIAIOSFODNN7EXAMPLE", "secret"),
            // What the extractor puts for a part no detector can read.
            ("\u{fffc}", "media"),
        ];
        for (text, name) in cases {
            let got = classify([text], Class::Public, None, &rules);
            assert!(
                got.fired.contains(&name.to_owned()),
                "{text}: {:?}",
                got.fired
            );
            assert_eq!(got.class, Class::Confidential, "{text}");
        }
        let names: Vec<&str> = cases.iter().map(|(_, n)| *n).collect();
        for builtin in super::BUILTIN_NAMES {
            assert!(names.contains(builtin), "{builtin} has no case");
        }
    }

    #[test]
    fn normalisation_defeats_evasions() {
        let cases = [
            (
                "pay \u{ff14}\u{ff11}\u{ff11}\u{ff11} \u{ff11}\u{ff11}\u{ff11}\u{ff11} 1111 1111",
                "card",
            ),
            ("pay 4111\u{200b}1111\u{200b}1111\u{200b}1111", "card"),
            ("pay \u{664}\u{661}\u{661}\u{661}111111111111", "card"),
            ("bob\u{200b}@example\u{ad}.com", "email"),
            ("bob\u{ff20}example.com", "email"),
            ("AKIA\u{2060}IOSFODNN7EXAMPLE", "secret"),
        ];
        let rules = RuleSet::compile(&[]).unwrap();
        for (text, name) in cases {
            let got = classify([text], Class::Public, None, &rules);
            assert_eq!(got.fired, vec![name.to_owned()], "{text:?}");
        }
    }
}
