//! TypeScript for a hub (feature `typescript`): one module with the hub's
//! server methods, its client contract and the types both use, typed
//! wrappers over `@microsoft/signalr`'s `HubConnection`.
//!
//! The types come from the same Rust declarations the server compiles:
//! `#[hub]` and `#[client]` describe every parameter and result
//! ([`HubSchema`]), and `ts-rs` turns each Rust type into its TypeScript
//! form (derive `ts_rs::TS` beside `serde`'s derives; `serde` attributes
//! such as `rename_all` are honoured). Large integers (`u64`, `i64`) are
//! `number`, as JSON and the JavaScript client deliver them.
//!
//! ```
//! # #[derive(Debug)] struct Chat;
//! #[tidings::client]
//! trait ChatClient {
//!     fn receive_message(user: &str, text: &str);
//! }
//!
//! #[tidings::hub(client = ChatClient)]
//! impl Chat {
//!     async fn send_message(&self, cx: &tidings::Context, user: String, text: String) {
//!         let _ = cx.clients().all().receive_message(&user, &text).await;
//!     }
//! }
//!
//! let module = tidings::typescript::TypeScriptModule::new::<Chat>().render();
//! assert!(module.contains("sendMessage(user: string, text: string): Promise<void>;"));
//! assert!(module.contains("receiveMessage(user: string, text: string): void | Promise<void>;"));
//! ```
//!
//! The module imports only types from `@microsoft/signalr`, so it adds no
//! code of its own to a bundle besides the small wrapper object.

use std::{any::TypeId, collections::HashSet, fmt::Write as _};

use heck::{ToLowerCamelCase, ToUpperCamelCase};
use ts_rs::{Config, TS, TypeVisitor};

use crate::schema::{Describe, Describer, HubSchema, MethodSchema, Opaque};

/// The [`Describer`] of TypeScript: describes every type that implements
/// `ts_rs::TS`.
#[derive(Debug, Clone, Copy)]
pub struct TypeScript;

/// A TypeScript type: the expression that names it, and the declarations
/// of the named types it uses.
#[derive(Debug, Clone)]
pub struct TsType {
    expr: String,
    /// `(identifier, exported declaration)`, dependencies first.
    declarations: Vec<(String, String)>,
}

impl TsType {
    /// The type expression (`string`, `Array<RoomUsers>`).
    pub fn expr(&self) -> &str {
        &self.expr
    }
}

impl Describer for TypeScript {
    type Type = TsType;
}

fn config() -> Config {
    Config::new().with_large_int("number")
}

impl<T: TS + ?Sized + 'static> Describe<T> for TypeScript {
    fn describe() -> TsType {
        let cfg = config();
        let mut collect = Collect {
            cfg: &cfg,
            seen: HashSet::new(),
            declarations: Vec::new(),
        };
        collect.visit::<T>();
        TsType {
            expr: T::name(&cfg),
            declarations: collect.declarations,
        }
    }
}

/// Walks a type's dependencies and declares each named type once.
struct Collect<'a> {
    cfg: &'a Config,
    seen: HashSet<TypeId>,
    declarations: Vec<(String, String)>,
}

impl TypeVisitor for Collect<'_> {
    fn visit<T: TS + 'static + ?Sized>(&mut self) {
        if !self.seen.insert(TypeId::of::<T>()) {
            return;
        }
        if T::output_path().is_none() {
            // A primitive or a container: only what it holds is declared.
            T::visit_dependencies(self);
            T::visit_generics(self);
            return;
        }
        T::visit_dependencies(self);
        let mut declaration = T::docs().unwrap_or_default();
        declaration.push_str("export ");
        declaration.push_str(&T::decl(self.cfg));
        self.declarations.push((T::ident(self.cfg), declaration));
    }
}

// `unknown`: a value the macros could not name a type for.
impl TS for Opaque {
    type WithoutGenerics = Self;
    type OptionInnerType = Self;

    fn name(_: &Config) -> String {
        "unknown".to_owned()
    }

    fn inline(cfg: &Config) -> String {
        Self::name(cfg)
    }
}

/// A TypeScript module for one hub; [`render`](Self::render) writes it.
///
/// For a hub named `Chat` (the Rust type `ChatHub` or `Chat`) it exports:
///
/// * the declarations of the named types of every parameter and result;
/// * `ChatInvoke` (`invoke`: waits for the result), `ChatSend` (`send`:
///   waits only until the message is sent) and `ChatStream` (`stream`:
///   an `IStreamResult`), the server methods in lowerCamelCase;
/// * `ChatClient`, the client methods a connection handles;
/// * `ChatConnection` and `chatConnection(connection)`, which wraps a
///   `HubConnection`: `.invoke.sendMessage(...)`, `.send.*`, `.stream.*`,
///   `.on("receiveMessage", handler)` (returns the function that removes
///   the handler) and `.off(...)`;
/// * `chatServerMethods` and `chatClientMethods`: the wire name of each
///   method.
#[derive(Debug, Clone)]
pub struct TypeScriptModule {
    rust_name: &'static str,
    name: String,
    server: Vec<MethodSchema<TsType>>,
    client: Vec<MethodSchema<TsType>>,
    header: Option<String>,
}

impl TypeScriptModule {
    /// The module of hub `H`, named after it without a `Hub` suffix.
    pub fn new<H: HubSchema<TypeScript>>() -> Self {
        let rust_name = H::NAME;
        let base = rust_name.strip_suffix("Hub").unwrap_or(rust_name);
        let base = if base.is_empty() { rust_name } else { base };
        TypeScriptModule {
            rust_name,
            name: base.to_upper_camel_case(),
            server: H::server_methods(),
            client: H::client_methods(),
            header: None,
        }
    }

    /// The prefix of the exported names (`Chat` gives `ChatInvoke`,
    /// `chatConnection`, ...).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_upper_camel_case();
        self
    }

    /// A line for the comment at the top of the file (for example how to
    /// generate it again).
    pub fn header(mut self, header: impl Into<String>) -> Self {
        self.header = Some(header.into());
        self
    }

    /// The module's source text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        let name = &self.name;
        let lower = name.to_lower_camel_case();
        let unary: Vec<_> = self.server.iter().filter(|m| !m.stream).collect();
        let streams: Vec<_> = self.server.iter().filter(|m| m.stream).collect();

        let _ = writeln!(
            out,
            "// Generated from the Rust hub `{}` by tidings. Do not edit.",
            self.rust_name
        );
        if let Some(header) = &self.header {
            for line in header.lines() {
                let _ = writeln!(out, "// {line}");
            }
        }
        let mut imports = vec!["HubConnection"];
        if !streams.is_empty() {
            imports.push("IStreamResult");
        }
        if self
            .server
            .iter()
            .any(|m| m.params.iter().any(|p| p.client_stream))
        {
            imports.push("Subject");
        }
        let _ = writeln!(
            out,
            "import type {{ {} }} from \"@microsoft/signalr\";",
            imports.join(", ")
        );

        let mut declared = HashSet::new();
        for method in self.server.iter().chain(&self.client) {
            let types = method
                .params
                .iter()
                .map(|p| &p.ty)
                .chain(method.returns.as_ref());
            for ty in types {
                for (ident, declaration) in &ty.declarations {
                    if declared.insert(ident.clone()) {
                        let _ = write!(out, "\n{declaration}\n");
                    }
                }
            }
        }

        interface(
            out,
            &format!("{name}Invoke"),
            &format!(
                "The methods of `{}`, invoked: each waits for the method to complete and resolves with its result.",
                self.rust_name
            ),
            &unary,
            |m| format!("Promise<{}>", result(m)),
        );
        interface(
            out,
            &format!("{name}Send"),
            "The same methods, sent: each resolves once the message is sent, without waiting for the method.",
            &unary,
            |_| "Promise<void>".to_owned(),
        );
        interface(
            out,
            &format!("{name}Stream"),
            &format!("The streaming methods of `{}`.", self.rust_name),
            &streams,
            |m| format!("IStreamResult<{}>", result(m)),
        );
        let client: Vec<_> = self.client.iter().collect();
        interface(
            out,
            &format!("{name}Client"),
            "The methods the hub invokes on a client; register handlers with `on`.",
            &client,
            |m| {
                let r = result(m);
                format!("{r} | Promise<{r}>")
            },
        );

        wire_names(out, &format!("{lower}ServerMethods"), &self.server);
        wire_names(out, &format!("{lower}ClientMethods"), &self.client);

        let _ = write!(
            out,
            "
/** A `HubConnection` to `{rust}` with typed methods. */
export interface {name}Connection {{
  readonly connection: HubConnection;
  readonly invoke: {name}Invoke;
  readonly send: {name}Send;
  readonly stream: {name}Stream;
  /** Registers a handler of a client method; returns the function that removes it. */
  on<K extends keyof {name}Client>(method: K, handler: {name}Client[K]): () => void;
  /** Removes one handler of a client method, or all of them. */
  off<K extends keyof {name}Client>(method: K, handler?: {name}Client[K]): void;
}}

/** Wraps `connection` (built with `HubConnectionBuilder`) in typed methods. */
export function {lower}Connection(connection: HubConnection): {name}Connection {{
  type Handler = (...args: any[]) => any;
  return {{
    connection,
    invoke: {{
",
            rust = self.rust_name,
        );
        for m in &unary {
            let _ = writeln!(
                out,
                "      {}: ({}) => connection.invoke<{}>(\"{}\"{}),",
                m.rust_name.to_lower_camel_case(),
                params(m),
                result(m),
                m.name,
                args(m)
            );
        }
        out.push_str("    },\n    send: {\n");
        for m in &unary {
            let _ = writeln!(
                out,
                "      {}: ({}) => connection.send(\"{}\"{}),",
                m.rust_name.to_lower_camel_case(),
                params(m),
                m.name,
                args(m)
            );
        }
        out.push_str("    },\n    stream: {\n");
        for m in &streams {
            let _ = writeln!(
                out,
                "      {}: ({}) => connection.stream<{}>(\"{}\"{}),",
                m.rust_name.to_lower_camel_case(),
                params(m),
                result(m),
                m.name,
                args(m)
            );
        }
        let _ = write!(
            out,
            "    }},
    on(method, handler) {{
      const name = {lower}ClientMethods[method];
      const callback = handler as Handler;
      connection.on(name, callback);
      return () => connection.off(name, callback);
    }},
    off(method, handler) {{
      const name = {lower}ClientMethods[method];
      if (handler === undefined) {{
        connection.off(name);
      }} else {{
        connection.off(name, handler as Handler);
      }}
    }},
  }};
}}
"
        );
    }
}

/// TypeScript words that cannot name a parameter.
const RESERVED: &[&str] = &[
    "break",
    "case",
    "catch",
    "class",
    "const",
    "continue",
    "debugger",
    "default",
    "delete",
    "do",
    "else",
    "enum",
    "export",
    "extends",
    "false",
    "finally",
    "for",
    "function",
    "if",
    "import",
    "in",
    "instanceof",
    "new",
    "null",
    "return",
    "super",
    "switch",
    "this",
    "throw",
    "true",
    "try",
    "typeof",
    "var",
    "void",
    "while",
    "with",
    "let",
    "static",
    "yield",
    "await",
];

fn param_name(name: &str) -> String {
    let name = name.trim_start_matches('_').to_lower_camel_case();
    let name = if name.is_empty() {
        "arg".to_owned()
    } else {
        name
    };
    if RESERVED.contains(&name.as_str()) {
        format!("{name}_")
    } else {
        name
    }
}

fn param_type(p: &crate::schema::ParamSchema<TsType>) -> String {
    if p.client_stream {
        format!("Subject<{}>", p.ty.expr)
    } else {
        p.ty.expr.clone()
    }
}

/// `user: string, text: string`
fn params(m: &MethodSchema<TsType>) -> String {
    m.params
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}: {}", unique_param(m, i), param_type(p)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `, user, text` (the arguments after the method name)
fn args(m: &MethodSchema<TsType>) -> String {
    (0..m.params.len())
        .map(|i| format!(", {}", unique_param(m, i)))
        .collect()
}

/// The TypeScript name of parameter `i`, made unique within the method.
fn unique_param(m: &MethodSchema<TsType>, i: usize) -> String {
    let name = param_name(m.params[i].name);
    let clashes = m.params[..i].iter().any(|p| param_name(p.name) == name);
    if clashes { format!("{name}{i}") } else { name }
}

fn result(m: &MethodSchema<TsType>) -> String {
    m.returns
        .as_ref()
        .map_or_else(|| "void".to_owned(), |t| t.expr.clone())
}

fn docs(out: &mut String, indent: &str, lines: &[&str]) {
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(out, "{indent}/**");
    for line in lines {
        let line = line.strip_prefix(' ').unwrap_or(line).replace("*/", "*\\/");
        let _ = writeln!(out, "{indent} * {line}");
    }
    let _ = writeln!(out, "{indent} */");
}

fn interface(
    out: &mut String,
    name: &str,
    doc: &str,
    methods: &[&MethodSchema<TsType>],
    returns: impl Fn(&MethodSchema<TsType>) -> String,
) {
    let _ = write!(out, "\n/** {doc} */\nexport interface {name} {{\n");
    for m in methods {
        docs(out, "  ", m.docs);
        let _ = writeln!(
            out,
            "  {}({}): {};",
            m.rust_name.to_lower_camel_case(),
            params(m),
            returns(m)
        );
    }
    out.push_str("}\n");
}

fn wire_names(out: &mut String, name: &str, methods: &[MethodSchema<TsType>]) {
    let _ = write!(
        out,
        "\n/** The wire name of each method. */\nexport const {name} = {{\n"
    );
    for m in methods {
        let _ = writeln!(
            out,
            "  {}: \"{}\",",
            m.rust_name.to_lower_camel_case(),
            m.name.replace('\\', "\\\\").replace('"', "\\\"")
        );
    }
    out.push_str("} as const;\n");
}
