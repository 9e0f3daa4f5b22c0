//! The frame of every page: header with versions, the status indicator and the login state, the
//! disabled-with-pending banner, styles, and (on pages that want it) the live-update script.

use std::convert::Infallible;

use axum::extract::{FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::auth::{Caller, Role};
use super::badge::colour;
use super::indicator::Indicator;
use super::{VERSION, WebState};

/// The path prefix the router is mounted under (empty at the root), so links work wherever the host mounts it.
pub struct Base(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Base {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let inner = parts.uri.path();
        let original = parts
            .extensions
            .get::<OriginalUri>()
            .map_or(inner, |uri| uri.0.path());
        let base = match original.strip_suffix(inner) {
            Some(base) => base,
            None if inner == "/" => original,
            None => "",
        };
        Ok(Base(base.trim_end_matches('/').to_owned()))
    }
}

/// `path` under the mount prefix; the list page is the prefix itself (a nested router does not answer at `prefix/`).
pub fn href(base: &str, path: &str) -> String {
    if path == "/" && !base.is_empty() {
        base.to_owned()
    } else {
        format!("{base}{path}")
    }
}

/// `text` percent-encoded for one path segment or query value (everything but `A-Z a-z 0-9 - . _ ~`), so a name
/// with `?`, `#`, `/` or white space still makes a valid link and `Location` header.
pub fn encode(text: &str) -> String {
    encode_keeping(text, b"")
}

/// A path as a query value (`?next=/migrations/NAME`): like [`encode`], but `/` stays as it is.
pub fn encode_path(text: &str) -> String {
    encode_keeping(text, b"/")
}

fn encode_keeping(text: &str, keep: &[u8]) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What the frame shows around a page's content.
pub struct Frame<'a> {
    /// The page title.
    pub title: &'a str,
    /// Mount prefix.
    pub base: &'a str,
    /// The indicator.
    pub indicator: &'a Indicator,
    /// Who is looking, if known.
    pub caller: Option<&'a Caller>,
    /// Whether to subscribe to live updates.
    pub live: bool,
}

const STYLE: &str = r#"
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2328;background:#f6f8fa}
header{display:flex;align-items:center;gap:18px;padding:10px 24px;background:#24292f;color:#fff;flex-wrap:wrap}
header a{color:#fff;text-decoration:none}header .brand{font-weight:600;font-size:16px}header .versions{color:#c9d1d9;font-size:12px}
header .spacer{flex:1}header form{display:inline;margin:0}header button{background:none;border:1px solid #8b949e;color:#fff;border-radius:4px;padding:2px 8px;cursor:pointer}
.indicator{display:inline-flex;align-items:center;gap:6px;padding:3px 10px;border-radius:12px;background:#fff;color:#1f2328;font-size:12px;font-weight:600}
.dot{width:10px;height:10px;border-radius:50%;display:inline-block}
main{padding:20px 24px;max-width:1500px;margin:0 auto}h1{font-size:20px;margin:0 0 14px}h1 code.name{font-size:18px}h2{font-size:16px;margin:24px 0 8px}
.banner{margin:0;padding:10px 24px;background:#fff3e0;border-bottom:1px solid #e65100;color:#8a3200;font-weight:600}
.notice{padding:10px 14px;border-radius:6px;margin:0 0 14px;border:1px solid}.notice.ok{background:#e8f5e9;border-color:#2e7d32;color:#1b5e20}.notice.err{background:#ffebee;border-color:#c62828;color:#8e0000}
table{border-collapse:collapse;width:100%;font-size:13px;background:#fff;border:1px solid #d0d7de;border-radius:6px}th,td{padding:6px 8px;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-size:12px;color:#57606a;font-weight:600;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.nowrap{white-space:nowrap}td.name{overflow-wrap:anywhere;min-width:250px}td.time{white-space:nowrap;font-size:12px;color:#57606a}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;background:#616161}
.badge.running{background:#1565c0}.badge.finished{background:#2e7d32}.badge.failed{background:#c62828}.badge.paused{background:#ef6c00}.badge.cancelled{background:#6e7781}.badge.pending{background:#8c959f}
.ranges{display:flex;gap:3px;height:16px;margin:.4em 0 .8em}.seg{display:block;min-width:6px;background:#eaeef2;border-radius:3px;overflow:hidden}.seg .fill{display:block;height:100%}.seg.running .fill{background:#1565c0}.seg.done .fill{background:#2e7d32}.seg.waiting .fill{background:#8c959f}
.bar{width:110px;height:10px;background:#eaeef2;border-radius:5px;overflow:hidden;display:inline-block;vertical-align:middle}.fill{display:block;height:100%;background:#1565c0;transition:width .4s}
.reason{color:#8e0000;font-size:12px;max-width:300px;white-space:normal}.muted{color:#57606a}td code{overflow-wrap:anywhere}td.who code{white-space:nowrap}code,pre{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px}
pre{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px;overflow:auto;max-height:260px;margin:0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:8px 20px;background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px 16px}
.grid .k{display:block;font-size:11px;color:#57606a;text-transform:uppercase;letter-spacing:.03em}
.actions{display:flex;gap:8px;flex-wrap:wrap}.button,button.primary{display:inline-block;padding:5px 14px;border-radius:6px;border:1px solid #d0d7de;background:#fff;color:#1f2328;text-decoration:none;font-weight:600;cursor:pointer;font-size:13px}
button.primary{background:#1f883d;border-color:#1a7f37;color:#fff}.button.danger,button.danger{background:#cf222e;border-color:#a40e26;color:#fff}
form.args .field{display:grid;grid-template-columns:180px 260px 1fr;gap:10px;align-items:center;margin:4px 0}form.args input{padding:4px 6px;border:1px solid #d0d7de;border-radius:4px;font-family:ui-monospace,monospace}
.field-error{color:#c62828;font-size:12px;font-weight:600}input.invalid{border-color:#c62828;background:#fff5f5}
.chart{width:100%;max-width:760px;background:#fff;border:1px solid #d0d7de;border-radius:6px}.legend{font-size:12px;color:#57606a}.swatch{display:inline-block;width:12px;height:3px;vertical-align:middle}
.login{max-width:380px;background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:16px}.login label{display:block;margin:8px 0 2px;font-weight:600}.login input{width:100%;padding:6px}
.two{display:grid;grid-template-columns:1fr 1fr;gap:16px}@media(max-width:900px){.two{grid-template-columns:1fr}}
"#;

/// Live updates: fills every `[data-field]` inside `[data-migration]` and the indicator from `/api/events`.
const SCRIPT: &str = r#"
(function(){
  if(!window.EventSource)return;
  var es=new EventSource(document.body.dataset.base+"/api/events");
  es.addEventListener("snapshot",function(e){
    var d=JSON.parse(e.data);
    d.migrations.forEach(function(m){
      document.querySelectorAll('[data-migration="'+CSS.escape(m.name)+'"]').forEach(function(box){
        Object.keys(m.cells).forEach(function(k){
          box.querySelectorAll('[data-field="'+k+'"]').forEach(function(el){
            if(k==="percent"){el.style.width=m.cells[k]+"%";}else{el.textContent=m.cells[k];}
            if(k==="status"){el.className="badge "+m.cells[k];}
          });
        });
      });
    });
    var ind=document.getElementById("indicator");
    if(ind){ind.querySelector(".text").textContent=d.indicator.message;ind.querySelector(".dot").style.background=d.colour;ind.dataset.state=d.indicator.state;}
  });
})();
"#;

/// The page around `content`.
pub fn page(state: &WebState, frame: &Frame, content: Markup) -> Markup {
    let indicator = frame.indicator;
    let base = frame.base;
    let unfinished = !(indicator.running.is_empty() && indicator.pending.is_empty());
    let disabled_with_pending = !indicator.background_migrations_enabled && unfinished;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (frame.title) " · bgmigrate" }
                // For scripts of this origin that change things through the JSON API with the login cookie: they send
                // it as X-CSRF-Token. Another origin cannot read this page.
                @if let Some(Caller { role: Role::Admin, session: Some(session), .. }) = frame.caller {
                    meta name="csrf-token" content=(session.csrf);
                }
                style { (PreEscaped(STYLE)) }
            }
            body data-base=(base) {
                header {
                    a.brand href=(href(base, "/")) { "Background migrations" }
                    span.versions {
                        @if let Some(app) = &state.app_version { (app) " · " }
                        "bgmigrate " (VERSION)
                    }
                    a #indicator .indicator href=(href(base, "/")) data-state=(indicator.state.as_str()) title="status of the background migrations" {
                        span.dot style={ "background:" (colour(indicator.state)) } {}
                        span.text { (indicator.message) }
                    }
                    span.spacer {}
                    @match frame.caller {
                        Some(caller) if caller.by_cookie => {
                            span.versions { "logged in as " (caller.actor.trim_start_matches("web:"))
                                @if caller.role == Role::Read { " (read only)" } }
                            form method="post" action={ (base) "/logout" } { button type="submit" { "Log out" } }
                        }
                        Some(_) => {}
                        None => { a href={ (base) "/login" } { "Log in" } }
                    }
                }
                @if disabled_with_pending {
                    p.banner role="alert" {
                        "Background migrations are disabled (ENABLE_BACKGROUND_MIGRATIONS=false) while some are not \
                         finished: the data may be inconsistent until they run."
                    }
                }
                main { (content) }
                @if frame.live { script { (PreEscaped(SCRIPT)) } }
            }
        }
    }
}
