//! The JavaScript sandbox that evaluates users' rule conditions and scripts.
//!
//! This module owns everything that touches QuickJS (through `rquickjs`): compiling rule
//! conditions and scripts, converting events between JSON and JavaScript, enforcing CPU,
//! memory and stack limits, and recovering when a rule blows one of those limits.
//!
//! # Design
//!
//! **One runtime per owner.** A [`Sandbox`] is one QuickJS `Runtime` plus one `Context`, and
//! the engine keeps one sandbox per rule owner. A QuickJS runtime is the unit of memory
//! accounting and of interruption, so giving every owner their own runtime means one owner's
//! runaway rule can only exhaust that owner's memory cap and CPU budget, and when a sandbox has
//! to be thrown away (see below) only that owner's rules are recompiled. Rules of one owner share
//! the runtime, which keeps per-rule overhead tiny (a compiled function, not a heap). The
//! sandbox is deliberately not `Send`: it lives on one engine thread.
//!
//! **Rules of one owner do not see each other.** Sharing a context must not let one rule change
//! what another computes, so every sandbox is locked down when it is built: every intrinsic
//! (`Object.prototype`, `Array.prototype.includes`, `JSON`, the generator and iterator
//! prototypes, ...) is frozen, then the global object itself, so `Object.prototype.x = 1` and
//! `globalThis.x = 1` are ignored (sloppy mode) or throw (strict). Variables a rule assigns
//! without declaring them (`seen = 1`, a `for (i = 0; ...)` loop) go to an object of the rule's
//! own [`Scope`], under which its functions run (`with`). A context per rule would isolate too,
//! but costs about 50 times the memory per rule; see BENCHMARKS.md ("Rule isolation").
//!
//! **Budgets.** Before every call into JavaScript the sandbox arms a deadline
//! (`now + cpu_budget`). QuickJS invokes the interrupt handler every few thousand bytecode
//! operations (and from the regexp engine); the handler only compares `Instant::now()` with the
//! deadline, so its cost is negligible. Once the deadline has passed the handler keeps returning
//! `true`, which makes QuickJS raise an uncatchable exception that unwinds through `try`/`finally`.
//! Memory is capped with `Runtime::set_memory_limit`, and native recursion with
//! `Runtime::set_max_stack_size`, measured from the point where the sandbox enters the context,
//! so deep JavaScript recursion becomes a `RangeError` instead of a crashed process.
//!
//! **Recovery.** After a timeout or an out-of-memory error the QuickJS heap is not trustworthy
//! (an allocation failure can leave half-built objects behind), so the sandbox rebuilds itself:
//! it drops the old runtime, creates a fresh one, re-applies every `set_global_entry` value (the
//! latest JSON of each entry is kept on the Rust side for exactly this reason) and recompiles
//! every live [`FnId`] from its remembered, already validated wrapper code (one parse per
//! function; scripts re-run their top-level code), so function ids stay valid. The rebuild
//! happens inside the call that failed, so that call returns after its budget plus the rebuild
//! time (about 4 µs per simple condition in a release build). Loaded values
//! ([`ValId`]) cannot be rebuilt because their JSON is not kept; they become stale and using
//! one returns [`ExprError::Invalid`]. [`Sandbox::generation`] counts rebuilds.
//!
//! **Compilation.** Nothing the user wrote is ever executed just to find out whether it parses.
//! Syntax is checked by a direct `eval` of `"throw 0;\n" + source` inside a throw-away function:
//! `eval` parses the whole text before running anything, and then the leading `throw` stops it
//! before any user statement runs. Conditions are then compiled once into a plain function, so
//! a call never re-parses:
//!
//! * a single expression becomes `function (params) { return (SRC\n); }`;
//! * statements ending in an expression statement are split at the last statement boundary into
//!   `function (params) { HEAD; return (LAST\n); }`, which gives the same value as `eval`'s
//!   completion value;
//! * anything else (for example a program ending in an `if` statement) falls back to a function
//!   that calls a direct `eval` of the source, which re-parses per call but is always correct.
//!
//! Every shortcut is verified by the engine itself rather than by a hand-written tokenizer; see
//! [`Sandbox::compile_expr`] for the exact checks.
//!
//! Loaded values and `_topic`-style global entries are deep-frozen, and `_topic` itself is a
//! read-only proxy, so one rule cannot change the event (or the topic state) that the next rule
//! sees. Sloppy mode is used throughout because
//! users' existing conditions assign to undeclared variables.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rquickjs::context::EvalOptions;
use rquickjs::function::Args;
use rquickjs::{
    Array, Coerced, Context, Ctx, FromJs, Function, Object, Persistent, Runtime, Value,
};
use serde_json::Value as Json;

/// Limits for one sandbox (one per rule owner).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU time allowed for one call (or one script's top-level code at compile time).
    pub cpu_budget: Duration,
    /// Maximum bytes the QuickJS heap may use.
    pub memory_limit: usize,
    /// Maximum native stack QuickJS may use, in bytes, measured from where the sandbox enters
    /// the engine. It must stay well below the calling thread's stack size.
    pub max_stack: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_budget: Duration::from_millis(10),
            memory_limit: 16 * 1024 * 1024,
            // 512 KiB leaves ample room on a default 2 MiB Rust thread stack; deep-recursion tests
            // run on such threads.
            max_stack: 512 * 1024,
        }
    }
}

/// Everything that can go wrong when compiling or running user JavaScript.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    /// The source does not parse; `line` and `column` are 1-based and relative to the user's text.
    #[error("syntax error at line {line}, column {column}: {message}")]
    Syntax {
        message: String,
        line: u32,
        column: u32,
    },
    /// An exception thrown at run time, as `"TypeError: cannot read property 'x' of undefined"`.
    #[error("{0}")]
    Thrown(String),
    #[error("stopped after exceeding its CPU budget of {0:?}")]
    Timeout(Duration),
    #[error("stopped after exceeding the memory limit of {0} bytes")]
    OutOfMemory(usize),
    #[error("recursion too deep (stack overflow)")]
    StackOverflow,
    /// A misuse of the sandbox rather than a fault of the JavaScript: an unknown or forgotten
    /// `FnId`, a released or stale `ValId` (from before a rebuild), a script without `handle`,
    /// an invalid parameter name, or a result that cannot be represented as JSON.
    #[error("{0}")]
    Invalid(String),
}

/// A compiled condition or script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FnId(u32);

/// Functions that share the variables they assign without declaring them (`seen = 1`, a loop's
/// `i`): the engine makes one per rule, so a rule's condition and value share them, as they
/// did when they were globals, and no other rule sees them.
///
/// Each scope is a null-prototype object that the functions compiled in it run under (`with`),
/// holding every name their text could assign that is not a global; the global object itself is
/// frozen. Such variables persist between calls until the sandbox is rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope(u32);

/// A JavaScript value kept alive in a sandbox until [`Sandbox::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ValId {
    slot: u32,
    /// Unique across all sandboxes and generations, so a handle from another sandbox or from
    /// before a rebuild can never alias a live value.
    serial: u64,
}

/// One argument of a call.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Val(ValId),
    Json(&'a Json),
    Str(&'a str),
    Num(f64),
}

/// What a script's `handle(event, ctx)` produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptOutcome {
    pub state: Json,
    pub actions: Vec<ScriptAction>,
}

/// One call a script made on its `ctx`, in call order.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptAction {
    Fire(Json),
    Resolve(String),
    Emit { source: String, event: Json },
}

/// How a condition was compiled; kept so tests can prove the fast paths are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `return (SRC)`: a single expression.
    Expr,
    /// `HEAD; return (LAST)`: statements ending in an expression statement.
    Split,
    /// A direct `eval` per call.
    Eval,
    /// A script's `handle` function.
    Script,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Expr,
    Script,
}

/// What is remembered of a compiled function so it can be recompiled after a rebuild.
struct Entry {
    kind: Kind,
    /// The final JavaScript text that was compiled: the wrapper around the user's source,
    /// already validated, so a rebuild parses each function once instead of re-running the
    /// checks of [`Sandbox::compile_expr`].
    code: String,
    path: Path,
    /// The scope it was compiled in.
    scope: u32,
    /// Set when recompiling after a rebuild failed; calls then return this error.
    broken: Option<ExprError>,
}

/// The deadline shared between the sandbox and the runtime's interrupt handler.
#[derive(Default)]
struct Clock {
    deadline: Cell<Option<Instant>>,
    tripped: Cell<bool>,
}

impl Clock {
    fn arm(&self, budget: Duration) {
        self.tripped.set(false);
        self.deadline.set(Some(Instant::now() + budget));
    }

    fn disarm(&self) {
        self.deadline.set(None);
    }

    /// Called by QuickJS every few thousand operations; returning true interrupts the script.
    fn should_interrupt(&self) -> bool {
        match self.deadline.get() {
            Some(deadline) if Instant::now() >= deadline => {
                self.tripped.set(true);
                true
            }
            _ => false,
        }
    }

    fn tripped(&self) -> bool {
        self.tripped.get()
    }
}

/// A loaded value. The serial detects released and stale handles.
struct Slot {
    serial: u64,
    value: Persistent<Value<'static>>,
}

/// JavaScript helpers compiled into every context.
struct Helpers {
    check: Persistent<Function<'static>>,
    run_script: Persistent<Function<'static>>,
    freeze: Persistent<Function<'static>>,
    declare: Persistent<Function<'static>>,
}

/// The global objects Rust fills in through [`Sandbox::set_global_entry`]. The global object is
/// frozen once the sandbox is built, so these exist from the start; rules can read them but not
/// write to them.
const GLOBAL_HOLDERS: [&str; 1] = ["_topic"];

/// One QuickJS runtime and context with everything that points into it.
///
/// Field order is drop order, and it matters: every persistent handle must be released before
/// the context and the runtime, or QuickJS aborts the process when the runtime is freed.
struct Live {
    fns: HashMap<u32, Persistent<Function<'static>>>,
    vals: Vec<Option<Slot>>,
    free_slots: Vec<u32>,
    /// Each scope's object: where the functions compiled in it keep the variables they assign
    /// without declaring them (see [`Scope`]). Made when a function is first instantiated in it.
    scopes: std::cell::RefCell<HashMap<u32, Persistent<Object<'static>>>>,
    /// What Rust writes into for each of [`GLOBAL_HOLDERS`]; rules see it through a read-only
    /// proxy.
    holders: Vec<(&'static str, Persistent<Object<'static>>)>,
    helpers: Helpers,
    limits: Limits,
    /// Whether this runtime ever reported running out of memory, after which QuickJS may have
    /// leaked objects; see [`free_runtime`].
    saw_oom: Cell<bool>,
    ctx: Context,
    rt: Runtime,
}

/// Internal error type of code running inside the context: either a raw rquickjs error, whose
/// pending exception still has to be caught and classified, or an already classified error.
enum Fault {
    Js(rquickjs::Error),
    Expr(ExprError),
}

impl From<rquickjs::Error> for Fault {
    fn from(e: rquickjs::Error) -> Self {
        Fault::Js(e)
    }
}

impl From<ExprError> for Fault {
    fn from(e: ExprError) -> Self {
        Fault::Expr(e)
    }
}

/// Runtimes deliberately leaked by [`free_runtime`]; see [`Sandbox::leaked_runtimes`].
static LEAKED_RUNTIMES: AtomicU64 = AtomicU64::new(0);

/// Source of serials for [`ValId`]; global so handles from different sandboxes never collide.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// How many statement boundaries (from the end) the compiler tries before falling back to
/// per-call `eval`. Each attempt costs a few parses, so this bounds compile time.
const MAX_SPLIT_ATTEMPTS: usize = 8;

/// Deepest JSON nesting converted by recursion on the Rust side.
const MAX_JSON_DEPTH: usize = 512;

/// Prefix for syntax checks; see the module documentation.
const CHECK_PREFIX: &str = "throw 0;\n";

/// Prefix for syntax checks of sources that start with a `"use strict"` directive, which the
/// plain prefix would demote to an ordinary string statement (hiding strict-only syntax errors).
const STRICT_CHECK_PREFIX: &str = "'use strict'; throw 0;\n";

/// Checks syntax without running anything: `eval` parses all of `code` first, then the
/// `throw 0;` that every checked text starts with stops execution. The direct eval runs inside a
/// fresh function so the declarations it instantiates vanish afterwards, and `eval` is a local
/// binding so user code that overwrites the global `eval` cannot break compilation.
const CHECK_JS: &str = r#"(function (realEval) {
  return function (code) {
    var eval = realEval;
    try { eval(code); } catch (err) { return err; }
    return undefined;
  };
})(eval)"#;

/// Runs a script's `handle(event, ctx)`. Actions are snapshotted as JSON text when recorded, so
/// later mutation of the object passed to `fire` does not change what was fired. It returns a
/// finisher that the sandbox calls after running queued microtasks, so an `async handle` works
/// too. The JSON functions are captured up front so user code cannot replace them.
const RUN_SCRIPT_JS: &str = r#"(function (stringify, parse, toStr) {
  return function (handle, event, stateText) {
    var actions = [];
    var failed = false;
    var failure;
    var ctx = {
      state: parse(stateText),
      fire: function (alert) { actions.push(["fire", stringify(alert)]); },
      resolve: function (key) { actions.push(["resolve", toStr(key)]); },
      emit: function (source, ev) { actions.push(["emit", toStr(source), stringify(ev)]); }
    };
    var result = handle(event, ctx);
    if (result !== null && typeof result === "object" && typeof result.then === "function") {
      result.then(undefined, function (err) { failed = true; failure = err; });
    }
    return function () {
      if (failed) { throw failure; }
      return [stringify(ctx.state), actions];
    };
  };
})(JSON.stringify, JSON.parse, String)"#;

/// Deep-freezes a JSON-shaped value so rules cannot modify data that other rules share.
const FREEZE_JS: &str = r#"(function (freeze, isArray, keys) {
  function deepFreeze(v) {
    freeze(v);
    var x, i;
    if (isArray(v)) {
      for (i = 0; i < v.length; i++) {
        x = v[i];
        if (typeof x === "object" && x !== null) { deepFreeze(x); }
      }
    } else {
      var ks = keys(v);
      for (i = 0; i < ks.length; i++) {
        x = v[ks[i]];
        if (typeof x === "object" && x !== null) { deepFreeze(x); }
      }
    }
  }
  return function (v) {
    if (typeof v === "object" && v !== null) { deepFreeze(v); }
    return v;
  };
})(Object.freeze, Array.isArray, Object.keys)"#;

/// Adds the names a function may assign without declaring to its scope object, as `undefined`,
/// unless they name a global (which must stay visible) or are there already (set by another
/// function of the same scope). `names` over-approximates: every identifier-like word of the
/// function's text, so words inside strings only add unused properties. Without a scope object
/// yet it makes one (no prototype) and returns it.
const DECLARE_JS: &str = r#"(function (g, hasOwn, define, create) {
  return function (scope, names) {
    if (scope === undefined) { scope = create(null); }
    for (var i = 0; i < names.length; i++) {
      var n = names[i];
      if (!(n in g) && !hasOwn.call(scope, n)) {
        define(scope, n, { value: undefined, writable: true, enumerable: true, configurable: true });
      }
    }
    return scope;
  };
})(globalThis, Object.prototype.hasOwnProperty, Object.defineProperty, Object.create)"#;

/// Freezes every intrinsic reachable from the global object (and those only reachable through
/// instances: generator, async and iterator prototypes), so no rule can change what another rule
/// of the same owner gets from `Object.prototype`, `Array.prototype.includes` or `JSON`. Then it
/// adds a read-only proxy for each name in `holders` and freezes the global object itself, so a
/// stray `globalThis.x = 1` is ignored (stray assignments to undeclared names go to the rule's
/// own scope object instead, see [`Scope`]). Returns the proxies' targets, for Rust to write to.
///
/// Freezing a prototype makes assigning a property of the same name to an ordinary object fail
/// (`err.name = 'X'` on an `Error`, `o.toString = f`), so those few properties, which programs
/// commonly set on their own objects, become accessors whose setter defines an own property.
const LOCKDOWN_JS: &str = r#"(function (holders) {
  var g = globalThis;
  var names = Object.getOwnPropertyNames, symbols = Object.getOwnPropertySymbols;
  var describe = Object.getOwnPropertyDescriptor, define = Object.defineProperty;
  var freeze = Object.freeze, protoOf = Object.getPrototypeOf;
  function overridable(obj, key) {
    var d = describe(obj, key);
    if (!d || !("value" in d)) { return; }
    var value = d.value;
    define(obj, key, {
      get: function () { return value; },
      set: function (v) {
        if (this === obj) { throw new TypeError("'" + key + "' is read-only"); }
        define(this, key, { value: v, writable: true, enumerable: true, configurable: true });
      },
      enumerable: d.enumerable,
      configurable: d.configurable
    });
  }
  ["toString", "toLocaleString", "valueOf", "constructor"].forEach(function (k) {
    overridable(Object.prototype, k);
  });
  ["Error", "EvalError", "RangeError", "ReferenceError", "SyntaxError", "TypeError", "URIError",
   "AggregateError", "InternalError"].forEach(function (name) {
    var ctor = g[name];
    if (typeof ctor === "function") {
      overridable(ctor.prototype, "name");
      overridable(ctor.prototype, "message");
    }
  });
  // The global object is frozen last, once the holders are on it.
  var seen = new WeakSet([g]);
  var todo = [];
  function add(v) {
    if (v !== null && (typeof v === "object" || typeof v === "function") && !seen.has(v)) {
      seen.add(v);
      todo.push(v);
    }
  }
  function addProperties(o) {
    var keys = names(o).concat(symbols(o));
    for (var i = 0; i < keys.length; i++) {
      var d = describe(o, keys[i]);
      add(d.value); add(d.get); add(d.set);
    }
  }
  addProperties(g);
  add(protoOf(g));
  [function* () {}, async function () {}, async function* () {}, (function* () {})(),
   (async function* () {})(), [][Symbol.iterator](), ""[Symbol.iterator](),
   new Map()[Symbol.iterator](), new Set()[Symbol.iterator](), /x/[Symbol.matchAll]("x"),
   (function () { return arguments; })()].forEach(add);
  while (todo.length > 0) {
    var o = todo.pop();
    freeze(o);
    add(protoOf(o));
    addProperties(o);
  }
  var refuse = function () { return false; };
  var handler = { set: refuse, defineProperty: refuse, deleteProperty: refuse,
                  setPrototypeOf: refuse, preventExtensions: refuse };
  var targets = [];
  for (var i = 0; i < holders.length; i++) {
    var target = {};
    targets.push(target);
    define(g, holders[i], { value: new Proxy(target, handler), writable: false, enumerable: false,
                            configurable: false });
  }
  freeze(g);
  return targets;
})"#;

/// Evaluation options for our own wrappers: sloppy, because user conditions assign to
/// undeclared variables, and a recognizable file name in stack traces.
fn sloppy() -> EvalOptions {
    let mut options = EvalOptions::default();
    options.strict = false;
    options.filename = Some("<rule>".to_string());
    options
}

impl Live {
    fn new(limits: &Limits, clock: &Rc<Clock>) -> Result<Live, ExprError> {
        let rt = Runtime::new().map_err(|_| ExprError::OutOfMemory(limits.memory_limit))?;
        rt.set_memory_limit(limits.memory_limit);
        rt.set_max_stack_size(limits.max_stack);
        let handler_clock = Rc::clone(clock);
        rt.set_interrupt_handler(Some(Box::new(move || handler_clock.should_interrupt())));
        let ctx = Context::full(&rt).map_err(|_| ExprError::OutOfMemory(limits.memory_limit))?;
        type Built = (Helpers, Vec<(&'static str, Persistent<Object<'static>>)>);
        let helpers = ctx.with(|ctx| {
            let built = build_helpers(&ctx);
            if let Err(rquickjs::Error::Exception) = &built {
                let exception = ctx.catch();
                return Err(describe(&ctx, &exception));
            }
            built.map_err(|e| e.to_string())
        });
        fn build_helpers(ctx: &Ctx<'_>) -> rquickjs::Result<Built> {
            let load = |src: &str| -> rquickjs::Result<Persistent<Function<'static>>> {
                let f: Function = ctx.eval_with_options(src, sloppy())?;
                Ok(Persistent::save(ctx, f))
            };
            let helpers = Helpers {
                check: load(CHECK_JS)?,
                run_script: load(RUN_SCRIPT_JS)?,
                freeze: load(FREEZE_JS)?,
                declare: load(DECLARE_JS)?,
            };
            // Last: it freezes everything the helpers above captured, and the global object.
            let lockdown: Function = ctx.eval_with_options(LOCKDOWN_JS, sloppy())?;
            let names = Array::new(ctx.clone())?;
            for (i, name) in GLOBAL_HOLDERS.iter().enumerate() {
                names.set(i, *name)?;
            }
            let targets: Array = lockdown.call((names,))?;
            let mut holders = Vec::with_capacity(GLOBAL_HOLDERS.len());
            for (i, name) in GLOBAL_HOLDERS.iter().enumerate() {
                let target: Object = targets.get(i)?;
                holders.push((*name, Persistent::save(ctx, target)));
            }
            Ok((helpers, holders))
        }
        let (helpers, holders) = match helpers {
            Ok(h) => h,
            Err(e) => {
                // Only an allocation failure can make our own fixed helpers fail to compile.
                free_runtime(ctx, rt, clock, true);
                return Err(ExprError::Invalid(format!(
                    "cannot initialise the JavaScript sandbox: {e}"
                )));
            }
        };
        Ok(Live {
            fns: HashMap::new(),
            vals: Vec::new(),
            free_slots: Vec::new(),
            scopes: std::cell::RefCell::new(HashMap::new()),
            holders,
            helpers,
            limits: *limits,
            saw_oom: Cell::new(false),
            ctx,
            rt,
        })
    }

    fn value<'js>(&self, ctx: &Ctx<'js>, id: ValId) -> Result<Value<'js>, Fault> {
        let slot = self
            .vals
            .get(id.slot as usize)
            .and_then(Option::as_ref)
            .filter(|s| s.serial == id.serial)
            .ok_or_else(|| {
                ExprError::Invalid(
                    "stale value handle: it was released or the sandbox was rebuilt".to_string(),
                )
            })?;
        Ok(slot.value.clone().restore(ctx)?)
    }

    fn store(&mut self, value: Persistent<Value<'static>>) -> ValId {
        let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
        let slot = Slot { serial, value };
        let index = match self.free_slots.pop() {
            Some(i) => {
                self.vals[i as usize] = Some(slot);
                i
            }
            None => {
                self.vals.push(Some(slot));
                u32::try_from(self.vals.len() - 1).expect("fewer than 2^32 live values")
            }
        };
        ValId {
            slot: index,
            serial,
        }
    }
}

/// Frees a runtime without ever letting QuickJS abort the process.
///
/// `JS_FreeRuntime` asserts that no object is left. Normally that holds once our handles and
/// the context are gone, but after an allocation failure QuickJS can leak objects, and freeing
/// such a runtime would abort the whole server. So the handles are released first, queued
/// microtasks are run with an already expired deadline (each is interrupted at its first check),
/// and the runtime is then inspected: objects left over with no job pending are a leak, and
/// the runtime is deliberately leaked instead of freed (losing at most `memory_limit` bytes beats
/// aborting). Pending jobs keep the context alive, which makes leftover objects expected; QuickJS
/// frees the job queue itself, so that case is trusted unless the runtime has run out of memory.
fn teardown(live: Live, clock: &Clock) {
    let Live {
        fns,
        vals,
        free_slots,
        scopes,
        holders,
        helpers,
        limits: _,
        saw_oom,
        ctx,
        rt,
    } = live;
    drop(fns);
    drop(vals);
    drop(free_slots);
    drop(scopes);
    drop(holders);
    drop(helpers);
    free_runtime(ctx, rt, clock, saw_oom.get());
}

/// The second half of [`teardown`], once no handle into the runtime is left but the context.
fn free_runtime(ctx: Context, rt: Runtime, clock: &Clock, saw_oom: bool) {
    drop(ctx);
    clock.tripped.set(false);
    clock.deadline.set(Some(Instant::now()));
    let mut jobs = 0;
    while rt.is_job_pending() && jobs < 1000 {
        // A job that throws (or is interrupted) is exactly what we want here; ignore it.
        let _ = rt.execute_pending_job();
        jobs += 1;
    }
    clock.disarm();
    rt.run_gc();
    let leak_suspected = if rt.is_job_pending() {
        saw_oom
    } else {
        let usage = rt.memory_usage();
        usage.obj_count != 0 || usage.js_func_count != 0 || usage.shape_count != 0
    };
    if leak_suspected {
        LEAKED_RUNTIMES.fetch_add(1, Ordering::Relaxed);
        std::mem::forget(rt);
    } else {
        drop(rt);
    }
}

/// One QuickJS runtime + context. It does not need to be Send (it lives on one engine thread).
pub struct Sandbox {
    limits: Limits,
    clock: Rc<Clock>,
    live: Option<Live>,
    entries: BTreeMap<u32, Entry>,
    next_fn: u32,
    next_scope: u32,
    /// Latest JSON of every `set_global_entry`, per global object, in first-set order.
    globals: serde_json::Map<String, Json>,
    generation: u64,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            teardown(live, &self.clock);
        }
    }
}

impl Sandbox {
    pub fn new(limits: Limits) -> Result<Self, ExprError> {
        let clock = Rc::new(Clock::default());
        let live = Live::new(&limits, &clock)?;
        Ok(Sandbox {
            limits,
            clock,
            live: Some(live),
            entries: BTreeMap::new(),
            next_fn: 0,
            next_scope: 0,
            globals: serde_json::Map::new(),
            generation: 0,
        })
    }

    /// Compiles `src` once as a function of `params`.
    ///
    /// `src` is either one expression or several statements whose value is the completion
    /// value of the last expression statement, as with `eval`. The compiler proceeds as follows
    /// (every "parses" below is the engine's own parser, run without executing anything):
    ///
    /// 1. `src` must parse as a script; otherwise the syntax error is reported in `src`'s
    ///    coordinates. From here on `src` is known to be complete, bracket-balanced code, so no
    ///    wrapper below can be closed early by it.
    /// 2. With trailing `;` and whitespace removed, if the text parses as `(SRC\n)` it is one
    ///    expression (balanced code inside parentheses must be an expression), so it is compiled
    ///    as `return (SRC\n)`.
    /// 3. Otherwise the last statement boundary (`;`, `}` or a newline) is searched from the end.
    ///    A candidate is accepted when inserting `@` at the boundary breaks parsing (so the
    ///    boundary is code, not inside a string, comment, regexp or template), the tail parses as
    ///    `(TAIL\n)` (given a real boundary in a valid program this means the boundary is at depth
    ///    zero and the tail is one expression), and `HEAD; return (TAIL\n)` compiles. Tails that
    ///    would mean something else as a statement (`{`, `function`, `class`, ...) or that could
    ///    continue the previous line without a semicolon are never split off.
    /// 4. Otherwise the function calls a direct `eval` of the source on every call.
    ///
    /// The function gets a scope of its own; see [`Sandbox::compile_expr_in`] to share one.
    pub fn compile_expr(&mut self, src: &str, params: &[&str]) -> Result<FnId, ExprError> {
        let scope = self.new_scope();
        self.compile_expr_in(scope, src, params)
    }

    /// A new [`Scope`], for functions that should share their undeclared variables.
    pub fn new_scope(&mut self) -> Scope {
        let scope = Scope(self.next_scope);
        self.next_scope = self.next_scope.wrapping_add(1);
        scope
    }

    /// [`Sandbox::compile_expr`] in a given scope.
    pub fn compile_expr_in(
        &mut self,
        scope: Scope,
        src: &str,
        params: &[&str],
    ) -> Result<FnId, ExprError> {
        for p in params {
            if !is_plain_identifier(p) || *p == "eval" || *p == "arguments" {
                return Err(ExprError::Invalid(format!("invalid parameter name {p:?}")));
            }
        }
        let params: Vec<String> = params.iter().map(|p| p.to_string()).collect();
        let (f, path, code) =
            self.execute(|ctx, live, _| build_expr(ctx, live, scope.0, src, &params))?;
        Ok(self.register(Kind::Expr, code, path, scope, f))
    }

    /// Compiles a script that must define `function handle(event, ctx)`.
    ///
    /// The script's top-level code runs once here (under the CPU budget) inside its own
    /// function scope, so helpers and constants of different scripts do not collide. Top-level
    /// variables therefore persist between calls until the sandbox is rebuilt; durable state
    /// belongs in `ctx.state`.
    pub fn compile_script(&mut self, src: &str) -> Result<FnId, ExprError> {
        let scope = self.new_scope();
        self.compile_script_in(scope, src)
    }

    /// [`Sandbox::compile_script`] in a given scope.
    pub fn compile_script_in(&mut self, scope: Scope, src: &str) -> Result<FnId, ExprError> {
        let (f, code) =
            self.execute(|ctx, live, clock| build_script(ctx, live, clock, scope.0, src))?;
        Ok(self.register(Kind::Script, code, Path::Script, scope, f))
    }

    /// Forgets a function; its scope goes with the last function compiled in it.
    pub fn forget(&mut self, id: FnId) {
        let Some(entry) = self.entries.remove(&id.0) else {
            return;
        };
        let scope_used = self.entries.values().any(|e| e.scope == entry.scope);
        if let Some(live) = self.live.as_mut() {
            live.fns.remove(&id.0);
            if !scope_used {
                live.scopes.borrow_mut().remove(&entry.scope);
            }
        }
    }

    /// Converts a JSON value into a (deep-frozen) JS value kept alive until `release`.
    pub fn load(&mut self, v: &Json) -> Result<ValId, ExprError> {
        let persistent = self.execute(|ctx, live, _| {
            let value = json_to_js(ctx, v)?;
            let value = freeze(ctx, &live.helpers, value)?;
            Ok(Persistent::save(ctx, value))
        })?;
        Ok(self.live_mut()?.store(persistent))
    }

    /// Same as [`Sandbox::load`] from raw JSON text, parsed by the engine's `JSON.parse`.
    pub fn load_json(&mut self, text: &str) -> Result<ValId, ExprError> {
        let persistent = self.execute(|ctx, live, _| {
            let value = match ctx.json_parse(text) {
                Ok(v) => v,
                Err(rquickjs::Error::Exception) => {
                    let exception = ctx.catch();
                    return Err(Fault::Expr(syntax_error(ctx, &exception, 0, &live.limits)));
                }
                Err(e) => return Err(e.into()),
            };
            let value = freeze(ctx, &live.helpers, value)?;
            Ok(Persistent::save(ctx, value))
        })?;
        Ok(self.live_mut()?.store(persistent))
    }

    pub fn release(&mut self, v: ValId) {
        if let Some(live) = self.live.as_mut() {
            let matches = live
                .vals
                .get(v.slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.serial == v.serial);
            if matches {
                live.vals[v.slot as usize] = None;
                live.free_slots.push(v.slot);
            }
        }
    }

    /// Sets `globalThis[object][key] = value` (creating the object if needed). The value is
    /// deep-frozen, and its JSON is remembered so a rebuilt sandbox gets it back.
    pub fn set_global_entry(
        &mut self,
        object: &str,
        key: &str,
        value: &Json,
    ) -> Result<(), ExprError> {
        self.execute(|ctx, live, _| apply_global_entry(ctx, live, object, key, value))?;
        // Remembered only once applied, so a value that cannot be loaded is not replayed into
        // every future rebuild.
        let holder = self
            .globals
            .entry(object.to_string())
            .or_insert_with(|| Json::Object(serde_json::Map::new()));
        if let Json::Object(map) = holder {
            map.insert(key.to_string(), value.clone());
        }
        Ok(())
    }

    /// Calls a compiled function and returns the JS truthiness of its result.
    pub fn call_bool(&mut self, id: FnId, args: &[Arg]) -> Result<bool, ExprError> {
        self.call_with(id, args, |ctx, v| Ok(Coerced::<bool>::from_js(ctx, v)?.0))
    }

    /// Calls a compiled function and converts the result to JSON (undefined, NaN, Infinity and
    /// functions become `null`).
    pub fn call_json(&mut self, id: FnId, args: &[Arg]) -> Result<Json, ExprError> {
        self.call_with(id, args, js_to_json)
    }

    /// Runs a script's `handle(event, ctx)`; see the module documentation for `ctx`.
    ///
    /// On any error no actions are returned and the caller keeps its previous state.
    pub fn call_script(
        &mut self,
        id: FnId,
        event: ValId,
        state: &Json,
    ) -> Result<ScriptOutcome, ExprError> {
        match self.entries.get(&id.0) {
            Some(entry) if entry.kind == Kind::Script => {}
            Some(_) => {
                return Err(ExprError::Invalid(format!(
                    "{id:?} is a condition, not a script"
                )));
            }
            None => return Err(unknown_fn(id)),
        }
        let state_text = match state {
            Json::Null => "{}".to_string(),
            other => other.to_string(),
        };
        self.check_callable(id)?;
        self.execute(|ctx, live, clock| {
            let handle = function(ctx, live, id)?;
            let event = live.value(ctx, event)?;
            let run = live.helpers.run_script.clone().restore(ctx)?;
            let state = rquickjs::String::from_str(ctx.clone(), &state_text)?;
            let finish: Function = run.call((handle, event, state))?;
            drain_jobs(ctx, clock);
            let result: Array = finish.call(())?;
            script_outcome(&result)
        })
    }

    /// Incremented every time the sandbox had to rebuild itself.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many QuickJS runtimes this process has deliberately leaked (across all sandboxes)
    /// because freeing them looked unsafe after an out-of-memory error. Worth exporting as a
    /// metric: each one holds up to `memory_limit` bytes.
    pub fn leaked_runtimes() -> u64 {
        LEAKED_RUNTIMES.load(Ordering::Relaxed)
    }

    fn call_with<R>(
        &mut self,
        id: FnId,
        args: &[Arg],
        finish: impl for<'js> FnOnce(&Ctx<'js>, Value<'js>) -> Result<R, Fault>,
    ) -> Result<R, ExprError> {
        self.check_callable(id)?;
        self.execute(|ctx, live, _| {
            let f = function(ctx, live, id)?;
            let mut call_args = Args::new(ctx.clone(), args.len());
            for arg in args {
                call_args.push_arg(arg_value(ctx, live, arg)?)?;
            }
            let result: Value = call_args.apply(&f)?;
            finish(ctx, result)
        })
    }

    fn check_callable(&self, id: FnId) -> Result<(), ExprError> {
        match self.entries.get(&id.0) {
            None => Err(unknown_fn(id)),
            Some(Entry {
                broken: Some(e), ..
            }) => Err(e.clone()),
            Some(_) => Ok(()),
        }
    }

    fn register(
        &mut self,
        kind: Kind,
        code: String,
        path: Path,
        scope: Scope,
        f: Persistent<Function<'static>>,
    ) -> FnId {
        let id = self.next_fn;
        self.next_fn = self
            .next_fn
            .checked_add(1)
            .expect("fewer than 2^32 compilations per sandbox");
        self.entries.insert(
            id,
            Entry {
                kind,
                code,
                path,
                scope: scope.0,
                broken: None,
            },
        );
        match self.live.as_mut() {
            Some(live) => {
                live.fns.insert(id, f);
            }
            // `execute` only returns Ok with a live runtime, so this cannot happen; dropping the
            // handle here would be harmless anyway because the runtime it belongs to is alive.
            None => drop(f),
        }
        FnId(id)
    }

    fn live_mut(&mut self) -> Result<&mut Live, ExprError> {
        self.live.as_mut().ok_or_else(|| {
            ExprError::Invalid("the JavaScript sandbox could not be rebuilt".to_string())
        })
    }

    /// Runs `body` inside the context with the CPU deadline armed, turns pending exceptions into
    /// [`ExprError`]s, runs queued microtasks, and rebuilds the sandbox after a timeout or an
    /// out-of-memory error.
    fn execute<R>(
        &mut self,
        body: impl for<'js> FnOnce(&Ctx<'js>, &Live, &Clock) -> Result<R, Fault>,
    ) -> Result<R, ExprError> {
        if self.live.is_none() {
            self.rebuild();
        }
        let limits = self.limits;
        let clock = &self.clock;
        let live = self.live.as_ref().ok_or_else(|| {
            ExprError::Invalid("the JavaScript sandbox could not be rebuilt".to_string())
        })?;
        let result = live.ctx.with(|ctx| {
            clock.arm(limits.cpu_budget);
            let result = match body(&ctx, live, clock) {
                Ok(v) => {
                    drain_jobs(&ctx, clock);
                    Ok(v)
                }
                Err(Fault::Expr(e)) => Err(e),
                Err(Fault::Js(e)) => Err(classify_error(&ctx, e, &limits)),
            };
            // An interrupt leaves the engine mid-way; whatever came back is not trustworthy.
            let result = if clock.tripped() {
                Err(ExprError::Timeout(limits.cpu_budget))
            } else {
                result
            };
            clock.disarm();
            result
        });
        if let Err(ExprError::OutOfMemory(_)) = &result {
            live.saw_oom.set(true);
        }
        if let Err(ExprError::Timeout(_) | ExprError::OutOfMemory(_)) = &result {
            self.rebuild();
        }
        result
    }

    /// Replaces the runtime with a fresh one, re-applies global entries and recompiles every
    /// live function under its old id.
    ///
    /// A function whose recompilation fails (a script's top-level code can time out or throw) is
    /// marked broken and reports that error when called. A resource failure while recompiling
    /// taints the new runtime too, so the rebuild starts over without that function; each round
    /// marks one more function broken, so this terminates.
    fn rebuild(&mut self) {
        if let Some(old) = self.live.take() {
            teardown(old, &self.clock);
        }
        self.generation += 1;
        loop {
            let Ok(mut live) = Live::new(&self.limits, &self.clock) else {
                // Left empty; the next operation tries again.
                return;
            };
            let limits = self.limits;
            let clock = &self.clock;
            let globals = &self.globals;
            let entries = &mut self.entries;
            let tainted = live.ctx.with(|ctx| {
                for (object, map) in globals {
                    let Json::Object(map) = map else { continue };
                    for (key, value) in map {
                        let applied = apply_global_entry(&ctx, &live, object, key, value);
                        if let Err(Fault::Js(_)) = applied {
                            // The value fitted before, so this is a resource problem in the
                            // fresh runtime; skip the entry rather than fail the rebuild.
                            let _ = ctx.catch();
                        }
                    }
                }
                let mut compiled = Vec::new();
                for (&id, entry) in entries.iter_mut() {
                    if entry.broken.is_some() {
                        continue;
                    }
                    clock.arm(limits.cpu_budget);
                    let built = match entry.kind {
                        Kind::Expr => instantiate_expr(&ctx, &live, entry.scope, &entry.code)
                            .map_err(Fault::from),
                        Kind::Script => {
                            instantiate_script(&ctx, &live, clock, entry.scope, &entry.code)
                        }
                    };
                    let built = match built {
                        Ok(f) => Ok(f),
                        Err(Fault::Expr(e)) => Err(e),
                        Err(Fault::Js(e)) => Err(classify_error(&ctx, e, &limits)),
                    };
                    let built = if clock.tripped() {
                        Err(ExprError::Timeout(limits.cpu_budget))
                    } else {
                        built
                    };
                    clock.disarm();
                    match built {
                        Ok(f) => compiled.push((id, f)),
                        Err(e) => {
                            if let ExprError::OutOfMemory(_) = e {
                                live.saw_oom.set(true);
                            }
                            let resource =
                                matches!(e, ExprError::Timeout(_) | ExprError::OutOfMemory(_));
                            entry.broken = Some(e);
                            if resource {
                                return Err(compiled);
                            }
                        }
                    }
                }
                Ok(compiled)
            });
            match tainted {
                Ok(compiled) => {
                    live.fns.extend(compiled);
                    self.live = Some(live);
                    return;
                }
                Err(compiled) => {
                    drop(compiled);
                    teardown(live, &self.clock);
                }
            }
        }
    }

    /// Whether calling `id` re-parses its source each time (the `eval` fallback of
    /// [`Sandbox::compile_expr`]); `None` for an unknown id. Worth surfacing to rule authors,
    /// since such conditions are much slower.
    pub fn reparses_per_call(&self, id: FnId) -> Option<bool> {
        self.entries.get(&id.0).map(|e| e.path == Path::Eval)
    }

    /// Bytes the runtime's heap uses now (benchmarks).
    #[cfg(test)]
    fn heap_bytes(&self) -> i64 {
        self.live
            .as_ref()
            .map_or(0, |l| l.rt.memory_usage().memory_used_size)
    }

    #[cfg(test)]
    fn path_of(&self, id: FnId) -> Option<Path> {
        self.entries.get(&id.0).map(|e| e.path)
    }
}

fn unknown_fn(id: FnId) -> ExprError {
    ExprError::Invalid(format!("unknown or forgotten function {id:?}"))
}

fn function<'js>(ctx: &Ctx<'js>, live: &Live, id: FnId) -> Result<Function<'js>, Fault> {
    let f = live.fns.get(&id.0).ok_or_else(|| unknown_fn(id))?;
    Ok(f.clone().restore(ctx)?)
}

fn arg_value<'js>(ctx: &Ctx<'js>, live: &Live, arg: &Arg) -> Result<Value<'js>, Fault> {
    Ok(match *arg {
        Arg::Val(id) => live.value(ctx, id)?,
        Arg::Json(v) => json_to_js(ctx, v)?,
        Arg::Str(s) => rquickjs::String::from_str(ctx.clone(), s)?.into_value(),
        Arg::Num(n) => Value::new_number(ctx.clone(), n),
    })
}

/// Runs queued microtasks (promise reactions, `queueMicrotask`) so they cannot pile up between
/// calls; they count against the current call's budget. Their exceptions are dropped, like
/// unhandled rejections in a browser; an interrupt is still noticed through the clock.
fn drain_jobs(ctx: &Ctx, clock: &Clock) {
    while !clock.tripped() && ctx.execute_pending_job() {}
}

fn freeze<'js>(ctx: &Ctx<'js>, helpers: &Helpers, value: Value<'js>) -> Result<Value<'js>, Fault> {
    let f = helpers.freeze.clone().restore(ctx)?;
    Ok(f.call((value,))?)
}

fn apply_global_entry(
    ctx: &Ctx,
    live: &Live,
    object: &str,
    key: &str,
    value: &Json,
) -> Result<(), Fault> {
    let Some((_, holder)) = live.holders.iter().find(|(name, _)| *name == object) else {
        return Err(ExprError::Invalid(format!(
            "`{object}` is not a global the sandbox fills in (known: {GLOBAL_HOLDERS:?})"
        ))
        .into());
    };
    let holder = holder.clone().restore(ctx)?;
    let value = json_to_js(ctx, value)?;
    holder.set(key, freeze(ctx, &live.helpers, value)?)?;
    Ok(())
}

/// Builds a JS value from JSON directly through the engine API.
fn json_to_js<'js>(ctx: &Ctx<'js>, v: &Json) -> Result<Value<'js>, Fault> {
    json_to_js_at(ctx, v, 0)
}

fn json_to_js_at<'js>(ctx: &Ctx<'js>, v: &Json, depth: usize) -> Result<Value<'js>, Fault> {
    if depth > MAX_JSON_DEPTH {
        return Err(
            ExprError::Invalid(format!("JSON nested deeper than {MAX_JSON_DEPTH} levels")).into(),
        );
    }
    Ok(match v {
        Json::Null => Value::new_null(ctx.clone()),
        Json::Bool(b) => Value::new_bool(ctx.clone(), *b),
        Json::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(i) => Value::new_int(ctx.clone(), i),
            // `as_f64` only fails for arbitrary-precision numbers, which this crate does not enable.
            None => Value::new_number(ctx.clone(), n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => rquickjs::String::from_str(ctx.clone(), s)?.into_value(),
        Json::Array(items) => {
            let array = Array::new(ctx.clone())?;
            for (i, item) in items.iter().enumerate() {
                array.set(i, json_to_js_at(ctx, item, depth + 1)?)?;
            }
            array.into_value()
        }
        Json::Object(map) => {
            let object = Object::new(ctx.clone())?;
            for (key, item) in map {
                object.set(key.as_str(), json_to_js_at(ctx, item, depth + 1)?)?;
            }
            object.into_value()
        }
    })
}

/// Converts with the engine's `JSON.stringify` (which already maps NaN/Infinity to null, skips
/// functions and detects cycles) and parses the text with serde_json.
fn js_to_json<'js>(ctx: &Ctx<'js>, v: Value<'js>) -> Result<Json, Fault> {
    match ctx.json_stringify(v)? {
        None => Ok(Json::Null),
        Some(text) => parse_json_text(&text.to_string()?),
    }
}

fn parse_json_text(text: &str) -> Result<Json, Fault> {
    serde_json::from_str(text)
        .map_err(|e| ExprError::Invalid(format!("result is not representable as JSON: {e}")).into())
}

fn script_outcome(result: &Array) -> Result<ScriptOutcome, Fault> {
    let state = optional_json(result.get(0)?)?;
    let recorded: Array = result.get(1)?;
    let mut actions = Vec::with_capacity(recorded.len());
    for i in 0..recorded.len() {
        let entry: Array = recorded.get(i)?;
        let kind: String = entry.get(0)?;
        actions.push(match kind.as_str() {
            "fire" => ScriptAction::Fire(optional_json(entry.get(1)?)?),
            "resolve" => ScriptAction::Resolve(entry.get(1)?),
            _ => ScriptAction::Emit {
                source: entry.get(1)?,
                event: optional_json(entry.get(2)?)?,
            },
        });
    }
    Ok(ScriptOutcome { state, actions })
}

/// `JSON.stringify` returns undefined for undefined and functions; those become null.
fn optional_json(text: Option<String>) -> Result<Json, Fault> {
    match text {
        None => Ok(Json::Null),
        Some(text) => parse_json_text(&text),
    }
}

/// Turns an rquickjs error into an [`ExprError`], catching (and so clearing) the pending
/// exception if there is one.
fn classify_error(ctx: &Ctx, error: rquickjs::Error, limits: &Limits) -> ExprError {
    match error {
        rquickjs::Error::Exception => classify_exception(ctx, &ctx.catch(), limits),
        rquickjs::Error::Allocation => ExprError::OutOfMemory(limits.memory_limit),
        other => ExprError::Invalid(other.to_string()),
    }
}

/// Maps a thrown JavaScript value to an [`ExprError`].
fn classify_exception<'js>(ctx: &Ctx<'js>, exception: &Value<'js>, limits: &Limits) -> ExprError {
    // QuickJS throws `null` when it cannot even allocate the error object for an out-of-memory
    // condition. A user's own `throw null` is reported the same way; that is rare and harmless
    // (it only costs a rebuild), whereas missing a real OOM would keep a tainted heap.
    if exception.is_null() {
        return ExprError::OutOfMemory(limits.memory_limit);
    }
    let Some(object) = exception.as_object().filter(|_| exception.is_error()) else {
        return ExprError::Thrown(format!("uncaught exception: {}", describe(ctx, exception)));
    };
    let name = string_property(object, "name").unwrap_or_else(|| "Error".to_string());
    let message = string_property(object, "message").unwrap_or_default();
    match (name.as_str(), message.as_str()) {
        // Also "string too long": QuickJS's cap on string length (strings are ropes, so doubling
        // a string reaches it without using much memory); it is a memory-exhaustion attempt too.
        ("InternalError", m) if m.starts_with("out of memory") || m == "string too long" => {
            ExprError::OutOfMemory(limits.memory_limit)
        }
        ("InternalError", "interrupted") => ExprError::Timeout(limits.cpu_budget),
        ("RangeError", "Maximum call stack size exceeded") => ExprError::StackOverflow,
        ("InternalError", m) if m.starts_with("stack overflow") => ExprError::StackOverflow,
        _ if message.is_empty() => ExprError::Thrown(name),
        _ => ExprError::Thrown(format!("{name}: {message}")),
    }
}

fn string_property(object: &Object, key: &str) -> Option<String> {
    let value: Value = object.get(key).ok()?;
    value.as_string()?.to_string().ok()
}

/// A short description of a thrown non-Error value. Calling `String()` on it can run user code
/// (`toString`), which is fine: the deadline is still armed.
fn describe<'js>(ctx: &Ctx<'js>, value: &Value<'js>) -> String {
    match Coerced::<String>::from_js(ctx, value.clone()) {
        Ok(Coerced(s)) => s,
        Err(_) => {
            let _ = ctx.catch();
            "(unprintable value)".to_string()
        }
    }
}

/// Turns an error value produced by the syntax check into an [`ExprError`]. `line_offset` is the
/// number of lines our prefix added before the user's text.
fn syntax_error<'js>(
    ctx: &Ctx<'js>,
    error: &Value<'js>,
    line_offset: u32,
    limits: &Limits,
) -> ExprError {
    let object = error.as_object().filter(|_| error.is_error());
    let name = object.and_then(|o| string_property(o, "name"));
    if name.as_deref() != Some("SyntaxError") {
        // Out of memory or too deeply nested to parse.
        return classify_exception(ctx, error, limits);
    }
    let message = object
        .and_then(|o| string_property(o, "message"))
        .unwrap_or_default();
    let (line, column) = object
        .and_then(|o| string_property(o, "stack"))
        .and_then(|s| error_position(&s))
        .unwrap_or((line_offset + 1, 1));
    ExprError::Syntax {
        message,
        line: line.saturating_sub(line_offset).max(1),
        column: column.max(1),
    }
}

/// Extracts `line:column` from the first frame of a QuickJS stack, e.g. `"    at <input>:3:4"`.
fn error_position(stack: &str) -> Option<(u32, u32)> {
    let frame = stack.lines().find(|l| l.trim_start().starts_with("at "))?;
    let location = frame.trim().trim_end_matches(')');
    let mut parts = location.rsplitn(3, ':');
    let column = parts.next()?.parse().ok()?;
    let line = parts.next()?.parse().ok()?;
    Some((line, column))
}

/// Runs the syntax check on `code` (which must already start with [`CHECK_PREFIX`]).
/// Returns `None` when it parses, or the error value.
fn check<'js>(ctx: &Ctx<'js>, live: &Live, code: &str) -> Result<Option<Value<'js>>, Fault> {
    let f = live.helpers.check.clone().restore(ctx)?;
    let text = rquickjs::String::from_str(ctx.clone(), code)?;
    let result: Value = f.call((text,))?;
    // `throw 0` ran, so everything before it parsed.
    if result.as_int() == Some(0) {
        Ok(None)
    } else {
        Ok(Some(result))
    }
}

/// Step 1 of [`Sandbox::compile_expr`] (and of scripts): `src` must parse as a whole program.
fn check_program(ctx: &Ctx, live: &Live, src: &str) -> Result<(), Fault> {
    let first = skip_trivia(src);
    let strict = ["\"use strict\"", "'use strict'"]
        .iter()
        .any(|d| first.starts_with(d));
    let prefix = if strict {
        STRICT_CHECK_PREFIX
    } else {
        CHECK_PREFIX
    };
    match check(ctx, live, &format!("{prefix}{src}"))? {
        // Both prefixes end in exactly one line break, so user line N is reported as N + 1.
        Some(err) => Err(syntax_error(ctx, &err, 1, &live.limits).into()),
        None => Ok(()),
    }
}

/// Whether `code` parses. Resource errors (out of memory, nesting too deep) are propagated
/// rather than read as "does not parse".
fn parses(ctx: &Ctx, live: &Live, code: &str) -> Result<bool, Fault> {
    match check(ctx, live, code)? {
        None => Ok(true),
        Some(err) => match classify_exception(ctx, &err, &live.limits) {
            e @ (ExprError::OutOfMemory(_) | ExprError::StackOverflow | ExprError::Timeout(_)) => {
                Err(e.into())
            }
            _ => Ok(false),
        },
    }
}

/// Whether `src` is exactly one expression; see [`Sandbox::compile_expr`] step 2.
fn is_single_expression(ctx: &Ctx, live: &Live, src: &str) -> Result<bool, Fault> {
    parses(ctx, live, &format!("{CHECK_PREFIX}({src}\n)"))
}

fn build_expr(
    ctx: &Ctx,
    live: &Live,
    scope: u32,
    src: &str,
    params: &[String],
) -> Result<(Persistent<Function<'static>>, Path, String), Fault> {
    check_program(ctx, live, src)?;
    let params = params.join(", ");
    let stripped = strip_trailing(src);
    let first = skip_trivia(stripped);
    let finish = |code: String, path: Path| -> Result<_, Fault> {
        Ok((instantiate_expr(ctx, live, scope, &code)?, path, code))
    };
    if first.is_empty() {
        // Only comments, whitespace and semicolons: eval's completion value is undefined.
        return finish(
            format!("(function ({params}) {{ return undefined; }})"),
            Path::Expr,
        );
    }
    if !starts_like_declaration(first) && is_single_expression(ctx, live, stripped)? {
        return finish(
            format!("(function ({params}) {{ return ({stripped}\n); }})"),
            Path::Expr,
        );
    }
    if parses(ctx, live, &format!("{CHECK_PREFIX}{stripped}"))?
        && let Some((f, code)) = split_last_statement(ctx, live, scope, stripped, &params)?
    {
        return Ok((f, Path::Split, code));
    }
    let literal = serde_json::to_string(src)
        .expect("serializing a string cannot fail")
        // JSON allows these raw, older JavaScript string literals do not; escape them to be safe.
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029");
    finish(
        format!(
            "(function (__tellifyEval) {{ return function ({params}) {{ var eval = __tellifyEval; return eval({literal}); }}; }})(eval)"
        ),
        Path::Eval,
    )
}

/// Evaluates a validated condition wrapper in its scope; this only creates the function.
fn instantiate_expr(
    ctx: &Ctx,
    live: &Live,
    scope: u32,
    code: &str,
) -> rquickjs::Result<Persistent<Function<'static>>> {
    let f: Function = in_scope(ctx, live, scope, code)?;
    Ok(Persistent::save(ctx, f))
}

/// Evaluates `code` (a parenthesized function expression, or a call giving one) inside
/// `with (scope)`, after declaring in the scope object the names `code` could assign.
fn in_scope<'js, T: FromJs<'js>>(
    ctx: &Ctx<'js>,
    live: &Live,
    scope: u32,
    code: &str,
) -> rquickjs::Result<T> {
    let existing = live.scopes.borrow().get(&scope).cloned();
    let is_new = existing.is_none();
    let object: Value = match existing {
        Some(o) => o.restore(ctx)?.into_value(),
        None => Value::new_undefined(ctx.clone()),
    };
    let names = Array::new(ctx.clone())?;
    for (i, word) in assignable_words(code).into_iter().enumerate() {
        names.set(i, word)?;
    }
    let declare = live.helpers.declare.clone().restore(ctx)?;
    let object: Object = declare.call((object, names))?;
    if is_new {
        live.scopes
            .borrow_mut()
            .insert(scope, Persistent::save(ctx, object.clone()));
    }
    let outer: Function = ctx.eval_with_options(
        format!("(function (__tellifyScope) {{ with (__tellifyScope) {{ return {code}; }} }})"),
        sloppy(),
    )?;
    outer.call((object,))
}

/// Every identifier-like word of `code` but keywords that can never be assigned: a superset of
/// the undeclared names it could assign (words in strings and comments included, harmlessly).
fn assignable_words(code: &str) -> Vec<&str> {
    const KEYWORDS: [&str; 30] = [
        "break",
        "case",
        "catch",
        "const",
        "continue",
        "default",
        "delete",
        "do",
        "else",
        "false",
        "finally",
        "for",
        "function",
        "if",
        "in",
        "instanceof",
        "let",
        "new",
        "null",
        "of",
        "return",
        "switch",
        "this",
        "throw",
        "true",
        "try",
        "typeof",
        "var",
        "void",
        "while",
    ];
    let mut seen = std::collections::HashSet::new();
    code.split(|c: char| !is_ident_char(c))
        .filter(|w| {
            w.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
                && !KEYWORDS.contains(w)
                && seen.insert(*w)
        })
        .collect()
}

/// Step 3 of [`Sandbox::compile_expr`]: finds the last statement boundary of `src` (already
/// known to parse) whose tail is a lone expression statement, and compiles
/// `HEAD; return (TAIL)`.
fn split_last_statement(
    ctx: &Ctx,
    live: &Live,
    scope: u32,
    src: &str,
    params: &str,
) -> Result<Option<(Persistent<Function<'static>>, String)>, Fault> {
    let mut attempts = 0;
    for (p, c) in src.char_indices().rev() {
        if !matches!(c, ';' | '}' | '\n') {
            continue;
        }
        let (head, tail) = src.split_at(p + 1);
        let first = skip_trivia(tail);
        if first.is_empty() || starts_like_declaration(first) {
            continue;
        }
        // After `}` or a line break (unlike after `;`) the tail could continue the previous
        // statement, e.g. `a\n(b)` is the call `a(b)`.
        if c != ';' && may_continue_previous(first) {
            continue;
        }
        // `let` followed by a line break and an identifier is a declaration, not ASI.
        if c == '\n' && ends_with_word(head.trim_end(), "let") {
            continue;
        }
        attempts += 1;
        if attempts > MAX_SPLIT_ATTEMPTS {
            break;
        }
        if !is_single_expression(ctx, live, tail)? {
            continue;
        }
        // `@` is never valid in code but harmless inside strings, comments, regexps and
        // templates: if inserting it still parses, the boundary was not real code.
        if parses(ctx, live, &format!("{CHECK_PREFIX}{head}@{tail}"))? {
            continue;
        }
        let code = format!("(function ({params}) {{\n{head};\nreturn ({tail}\n);\n}})");
        match instantiate_expr(ctx, live, scope, &code) {
            Ok(f) => return Ok(Some((f, code))),
            Err(rquickjs::Error::Exception) => {
                let _ = ctx.catch();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

fn build_script(
    ctx: &Ctx,
    live: &Live,
    clock: &Clock,
    scope: u32,
    src: &str,
) -> Result<(Persistent<Function<'static>>, String), Fault> {
    check_program(ctx, live, src)?;
    // `src` parses as a whole program, so it cannot close this wrapper early.
    let code = format!(
        "(function () {{\n{src}\n;return typeof handle === \"function\" ? handle : undefined;\n}})"
    );
    Ok((instantiate_script(ctx, live, clock, scope, &code)?, code))
}

/// Evaluates a validated script wrapper and runs the script's top-level code to get `handle`.
fn instantiate_script(
    ctx: &Ctx,
    live: &Live,
    clock: &Clock,
    scope: u32,
    code: &str,
) -> Result<Persistent<Function<'static>>, Fault> {
    let factory: Function = in_scope(ctx, live, scope, code)?;
    // The budget covers running the top-level code, not our parsing above.
    clock.arm(live.limits.cpu_budget);
    let handle: Value = factory.call(())?;
    match handle.into_function() {
        Some(f) => Ok(Persistent::save(ctx, f)),
        None => Err(ExprError::Invalid(
            "the script must define function handle(event, ctx)".to_string(),
        )
        .into()),
    }
}

/// Removes trailing whitespace and semicolons; neither changes a program's completion value.
fn strip_trailing(src: &str) -> &str {
    src.trim_end_matches(|c: char| is_js_space(c) || c == ';')
}

fn is_js_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

/// Skips leading whitespace and comments. At the start of a statement a `/` followed by `/` or
/// `*` always starts a comment, so this is exact there.
fn skip_trivia(mut s: &str) -> &str {
    loop {
        s = s.trim_start_matches(is_js_space);
        if let Some(rest) = s.strip_prefix("//") {
            s = rest
                .find(['\n', '\r', '\u{2028}', '\u{2029}'])
                .map_or("", |i| &rest[i..]);
        } else if let Some(rest) = s.strip_prefix("/*") {
            match rest.find("*/") {
                Some(i) => s = &rest[i + 2..],
                None => return "",
            }
        } else {
            return s;
        }
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

fn is_plain_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
        && chars.all(is_ident_char)
}

fn starts_with_word(s: &str, word: &str) -> bool {
    s.strip_prefix(word)
        .is_some_and(|rest| !rest.starts_with(is_ident_char))
}

fn ends_with_word(s: &str, word: &str) -> bool {
    s.strip_suffix(word)
        .is_some_and(|rest| !rest.ends_with(is_ident_char))
}

/// Text that parses as an expression but means something else at the start of a statement
/// (ECMAScript forbids expression statements starting with these), e.g. `{a: 1}` is a block.
fn starts_like_declaration(t: &str) -> bool {
    t.starts_with('{')
        || ["function", "class", "let", "async"]
            .iter()
            .any(|w| starts_with_word(t, w))
}

/// Whether a statement starting with `t` could instead continue the previous line's
/// expression (no automatic semicolon insertion).
fn may_continue_previous(t: &str) -> bool {
    t.starts_with([
        '(', '[', '`', '+', '-', '/', '.', '?', ',', '=', '<', '>', '*', '%', '&', '|', '^', ':',
    ]) || t.starts_with("!=")
        || starts_with_word(t, "in")
        || starts_with_word(t, "instanceof")
        || starts_with_word(t, "of")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PARAMS: &[&str] = &["event", "e", "source", "time"];

    fn sandbox() -> Sandbox {
        Sandbox::new(Limits::default()).expect("sandbox")
    }

    /// A sandbox with a generous CPU budget, for tests that must hit a different limit first
    /// even in an unoptimised build.
    fn sandbox_with_budget(budget: Duration) -> Sandbox {
        Sandbox::new(Limits {
            cpu_budget: budget,
            ..Limits::default()
        })
        .expect("sandbox")
    }

    fn eval_json(sb: &mut Sandbox, src: &str) -> Json {
        let f = sb.compile_expr(src, PARAMS).expect("compiles");
        sb.call_json(f, &[]).expect("runs")
    }

    #[test]
    fn timeout_in_condition_is_fast_and_recoverable() {
        let mut sb = sandbox();
        let good = sb.compile_expr("event.v * 2", PARAMS).expect("compiles");
        let bad = sb.compile_expr("while(true){}", PARAMS).expect("compiles");
        let start = Instant::now();
        let err = sb.call_bool(bad, &[]).expect_err("must time out");
        let elapsed = start.elapsed();
        assert_eq!(err, ExprError::Timeout(Duration::from_millis(10)));
        assert!(elapsed < Duration::from_millis(200), "took {elapsed:?}");
        assert_eq!(sb.generation(), 1);
        let ev = sb.load(&json!({"v": 21})).expect("load");
        assert_eq!(
            sb.call_json(good, &[Arg::Val(ev)]).expect("runs"),
            json!(42)
        );
        // The same loop times out again (and is still the same FnId).
        assert!(matches!(sb.call_bool(bad, &[]), Err(ExprError::Timeout(_))));
    }

    #[test]
    fn timeout_cannot_be_caught_by_the_rule() {
        let mut sb = sandbox();
        let f = sb
            .compile_expr("(function(){ try { while(true){} } catch (e) { return 1 } finally { while(true){} } })()", PARAMS)
            .expect("compiles");
        let start = Instant::now();
        assert!(matches!(sb.call_json(f, &[]), Err(ExprError::Timeout(_))));
        assert!(start.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn timeout_in_script_handle() {
        let mut sb = sandbox();
        let s = sb
            .compile_script("function handle(event, ctx) { ctx.fire({key: 'a'}); for(;;){} }")
            .expect("compiles");
        let ev = sb.load(&json!({})).expect("load");
        let start = Instant::now();
        let err = sb
            .call_script(s, ev, &Json::Null)
            .expect_err("must time out");
        assert!(matches!(err, ExprError::Timeout(_)), "{err:?}");
        assert!(start.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn timeout_in_script_top_level() {
        let mut sb = sandbox();
        let err = sb
            .compile_script("while (true) {}\nfunction handle(event, ctx) {}")
            .expect_err("must time out");
        assert!(matches!(err, ExprError::Timeout(_)));
    }

    #[test]
    fn timeout_in_microtask() {
        let mut sb = sandbox();
        let f = sb
            .compile_expr(
                "Promise.resolve().then(function(){ while(true){} }), true",
                PARAMS,
            )
            .expect("compiles");
        assert!(matches!(sb.call_bool(f, &[]), Err(ExprError::Timeout(_))));
    }

    #[test]
    fn array_bomb_is_out_of_memory() {
        let mut sb = sandbox_with_budget(Duration::from_secs(20));
        let other = sb.compile_expr("1 + 1", PARAMS).expect("compiles");
        let bomb = sb
            .compile_expr(
                "let a=[]; while(true) a.push(new Array(100000).fill(1))",
                PARAMS,
            )
            .expect("compiles");
        assert_eq!(
            sb.call_bool(bomb, &[]),
            Err(ExprError::OutOfMemory(16 * 1024 * 1024))
        );
        assert_eq!(sb.generation(), 1);
        assert_eq!(sb.call_json(other, &[]).expect("runs"), json!(2));
    }

    #[test]
    fn small_object_bomb_is_out_of_memory() {
        // Small allocations exhaust memory so exactly that QuickJS cannot allocate the error
        // object either and throws `null`.
        let mut sb = sandbox_with_budget(Duration::from_secs(20));
        let bomb = sb
            .compile_expr(
                "var a=[]; while(true) a.push({x: [1,2,3], y: 'abc' + a.length})",
                PARAMS,
            )
            .expect("compiles");
        assert!(matches!(
            sb.call_bool(bomb, &[]),
            Err(ExprError::OutOfMemory(_))
        ));
    }

    #[test]
    fn string_doubling_bombs_are_out_of_memory() {
        let mut sb = sandbox_with_budget(Duration::from_secs(20));
        for src in [
            "var s='x'; while(true) s += s;",
            "var s='x'; while(true) { s = s + s; s.indexOf('y') }",
            "var s='x'; while(true) s = s.repeat(2);",
        ] {
            let f = sb.compile_expr(src, PARAMS).expect("compiles");
            let err = sb.call_bool(f, &[]).expect_err("must fail");
            assert!(matches!(err, ExprError::OutOfMemory(_)), "{src}: {err:?}");
        }
    }

    #[test]
    fn caught_out_of_memory_does_not_poison_the_sandbox() {
        let mut sb = sandbox_with_budget(Duration::from_secs(20));
        let f = sb
            .compile_expr("try { var a=[]; while(true) a.push(new Array(100000).fill(1)) } catch (e) { a = null } 5", PARAMS)
            .expect("compiles");
        assert_eq!(sb.call_json(f, &[]).expect("runs"), json!(5));
        assert_eq!(sb.call_json(f, &[]).expect("runs again"), json!(5));
    }

    #[test]
    fn deep_recursion_is_stack_overflow() {
        let mut sb = sandbox();
        let f = sb
            .compile_expr("function f(n){return f(n+1)+1} f(0)", PARAMS)
            .expect("compiles");
        assert_eq!(sb.call_bool(f, &[]), Err(ExprError::StackOverflow));
        // No rebuild is needed: QuickJS unwinds a stack overflow cleanly.
        assert_eq!(sb.generation(), 0);
        let g = sb.compile_expr("1 + 2", PARAMS).expect("compiles");
        assert_eq!(sb.call_json(g, &[]).expect("runs"), json!(3));
        let s = sb
            .compile_script("function handle(event, ctx) { function r(){ return r() } r() }")
            .expect("compiles");
        let ev = sb.load(&json!({})).expect("load");
        assert_eq!(
            sb.call_script(s, ev, &Json::Null),
            Err(ExprError::StackOverflow)
        );
    }

    #[test]
    fn deeply_nested_source_and_json_do_not_crash() {
        let mut sb = sandbox();
        let src = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(matches!(
            sb.compile_expr(&src, PARAMS),
            Err(ExprError::StackOverflow)
        ));
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(sb.load_json(&text), Err(ExprError::StackOverflow)));
        let mut deep = json!(1);
        for _ in 0..1000 {
            deep = json!([deep]);
        }
        assert!(matches!(sb.load(&deep), Err(ExprError::Invalid(_))));
        assert_eq!(eval_json(&mut sb, "1"), json!(1));
    }

    #[test]
    fn rebuild_keeps_functions_and_global_entries() {
        let mut sb = sandbox();
        sb.set_global_entry("_topic", "cluster.metrics", &json!({"numAppsRunning": 7}))
            .expect("set");
        sb.set_global_entry("_topic", "other", &json!({"x": 1}))
            .expect("set");
        sb.set_global_entry("_topic", "cluster.metrics", &json!({"numAppsRunning": 9}))
            .expect("set");
        let cond = sb
            .compile_expr("_topic['cluster.metrics'].numAppsRunning", PARAMS)
            .expect("compiles");
        let keys = sb
            .compile_expr("Object.keys(_topic).join()", PARAMS)
            .expect("compiles");
        let script = sb
            .compile_script(
                "const K = 'k'; function handle(event, ctx) { ctx.resolve(K + event.n) }",
            )
            .expect("compiles");
        let ev = sb.load(&json!({"n": 1})).expect("load");
        let split = sb
            .compile_expr(
                "var m = _topic['cluster.metrics']; m.numAppsRunning + 1",
                PARAMS,
            )
            .expect("compiles");
        let slow = sb
            .compile_expr("var m = _topic.other; if (m) { m.x + 2 }", PARAMS)
            .expect("compiles");
        assert_eq!(sb.path_of(split), Some(Path::Split));
        assert_eq!(sb.path_of(slow), Some(Path::Eval));
        let looping = sb.compile_expr("for(;;);", PARAMS).expect("compiles");

        assert!(matches!(
            sb.call_bool(looping, &[]),
            Err(ExprError::Timeout(_))
        ));
        assert_eq!(sb.generation(), 1);

        assert_eq!(sb.call_json(cond, &[]).expect("runs"), json!(9));
        assert_eq!(sb.call_json(split, &[]).expect("runs"), json!(10));
        assert_eq!(sb.call_json(slow, &[]).expect("runs"), json!(3));
        assert_eq!(
            sb.call_json(keys, &[]).expect("runs"),
            json!("cluster.metrics,other")
        );
        // The old value handle is stale: an error, not a panic.
        let err = sb.call_bool(cond, &[Arg::Val(ev)]).expect_err("stale");
        assert!(matches!(err, ExprError::Invalid(_)), "{err:?}");
        assert!(matches!(
            sb.call_script(script, ev, &Json::Null),
            Err(ExprError::Invalid(_))
        ));
        let ev = sb.load(&json!({"n": 2})).expect("load");
        let out = sb.call_script(script, ev, &Json::Null).expect("runs");
        assert_eq!(out.actions, vec![ScriptAction::Resolve("k2".into())]);
    }

    #[test]
    fn failed_global_entries_are_not_replayed() {
        let mut sb = sandbox();
        let mut deep = json!(1);
        for _ in 0..1000 {
            deep = json!([deep]);
        }
        assert!(sb.set_global_entry("_topic", "deep", &deep).is_err());
        sb.set_global_entry("_topic", "ok", &json!(1)).expect("set");
        let f = sb
            .compile_expr("Object.keys(_topic).join()", PARAMS)
            .expect("compiles");
        let spin = sb.compile_expr("for(;;);", PARAMS).expect("compiles");
        assert!(sb.call_bool(spin, &[]).is_err());
        assert_eq!(sb.call_json(f, &[]).expect("runs"), json!("ok"));
    }

    #[test]
    fn released_and_foreign_handles_are_errors() {
        let mut sb = sandbox();
        let mut other = sandbox();
        let f = sb.compile_expr("event.a", PARAMS).expect("compiles");
        let ev = sb.load(&json!({"a": 1})).expect("load");
        let foreign = other.load(&json!({"a": 2})).expect("load");
        assert!(matches!(
            sb.call_json(f, &[Arg::Val(foreign)]),
            Err(ExprError::Invalid(_))
        ));
        sb.release(ev);
        assert!(matches!(
            sb.call_json(f, &[Arg::Val(ev)]),
            Err(ExprError::Invalid(_))
        ));
        // A new value may reuse the slot, but the old handle still does not alias it.
        let ev2 = sb.load(&json!({"a": 3})).expect("load");
        assert!(matches!(
            sb.call_json(f, &[Arg::Val(ev)]),
            Err(ExprError::Invalid(_))
        ));
        assert_eq!(sb.call_json(f, &[Arg::Val(ev2)]).expect("runs"), json!(3));
        sb.forget(f);
        assert!(matches!(
            sb.call_json(f, &[Arg::Val(ev2)]),
            Err(ExprError::Invalid(_))
        ));
    }

    #[test]
    fn thrown_errors_are_readable_and_harmless() {
        let mut sb = sandbox();
        let bad = sb.compile_expr("event.a.b.c", PARAMS).expect("compiles");
        let good = sb.compile_expr("event.x + 1", PARAMS).expect("compiles");
        let ev = sb.load(&json!({"x": 1})).expect("load");
        let err = sb.call_bool(bad, &[Arg::Val(ev)]).expect_err("throws");
        assert_eq!(
            err,
            ExprError::Thrown("TypeError: cannot read property 'b' of undefined".into())
        );
        assert_eq!(
            err.to_string(),
            "TypeError: cannot read property 'b' of undefined"
        );
        assert_eq!(sb.call_json(good, &[Arg::Val(ev)]).expect("runs"), json!(2));
        assert_eq!(sb.generation(), 0);

        // A name the rule never declared reads as undefined (it could be one the rule assigns
        // without declaring, which lives in the rule's scope object; see `Scope`).
        let f = sb.compile_expr("nope()", PARAMS).expect("compiles");
        assert_eq!(
            sb.call_bool(f, &[]),
            Err(ExprError::Thrown("TypeError: not a function".into()))
        );
        let f = sb
            .compile_expr("[typeof nope, nope === undefined]", PARAMS)
            .expect("compiles");
        assert_eq!(sb.call_json(f, &[]), Ok(json!(["undefined", true])));
        let f = sb
            .compile_expr("(function(){ throw 'boom' })()", PARAMS)
            .expect("compiles");
        assert_eq!(
            sb.call_bool(f, &[]),
            Err(ExprError::Thrown("uncaught exception: boom".into()))
        );
        let f = sb
            .compile_expr("(function(){ throw new Error('custom') })()", PARAMS)
            .expect("compiles");
        assert_eq!(
            sb.call_bool(f, &[]),
            Err(ExprError::Thrown("Error: custom".into()))
        );
    }

    #[test]
    fn no_io_globals() {
        let mut sb = sandbox();
        let src = "[typeof require, typeof process, typeof fetch, typeof std, typeof os, \
                   typeof XMLHttpRequest, typeof setTimeout, typeof print, typeof console, \
                   typeof import_meta, typeof Deno, typeof Bun]";
        let v = eval_json(&mut sb, src);
        assert_eq!(v, json!(vec!["undefined"; 12]));
        // Atomics.wait must not block the engine thread.
        let f = sb
            .compile_expr(
                "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0)",
                PARAMS,
            )
            .expect("compiles");
        assert!(matches!(sb.call_bool(f, &[]), Err(ExprError::Thrown(_))));
    }

    #[test]
    fn syntax_errors_point_into_user_text() {
        let mut sb = sandbox();
        match sb.compile_expr("event.x >", PARAMS) {
            Err(ExprError::Syntax {
                line,
                column,
                message,
            }) => {
                assert_eq!((line, column), (1, 10), "{message}");
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
        match sb.compile_expr("var a = 1;\nvar b = 2;\na +* b", PARAMS) {
            Err(ExprError::Syntax { line, column, .. }) => assert_eq!((line, column), (3, 4)),
            other => panic!("expected a syntax error, got {other:?}"),
        }
        match sb.compile_script("function handle(event, ctx) {\n  ctx.fire({})\n  x y\n}") {
            Err(ExprError::Syntax { line, column, .. }) => assert_eq!((line, column), (3, 5)),
            other => panic!("expected a syntax error, got {other:?}"),
        }
        let err = sb.compile_expr("event.x >", PARAMS).expect_err("syntax");
        assert!(
            err.to_string()
                .starts_with("syntax error at line 1, column 10: "),
            "{err}"
        );
        // A "use strict" directive makes strict-only syntax errors compile-time errors.
        match sb.compile_expr("'use strict'\nvar a = 1;\nwith (a) {}", PARAMS) {
            Err(ExprError::Syntax { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected a syntax error, got {other:?}"),
        }
        assert!(
            sb.compile_expr("var a = {};\nwith (a) {}\n1", PARAMS)
                .is_ok()
        );
        // Valid as a function body but not as a condition.
        assert!(matches!(
            sb.compile_expr("return 1", PARAMS),
            Err(ExprError::Syntax { .. })
        ));
        assert!(matches!(
            sb.compile_script("return 1"),
            Err(ExprError::Syntax { .. })
        ));
        assert!(matches!(
            sb.load_json("{\"a\": }"),
            Err(ExprError::Syntax { .. })
        ));
    }

    #[test]
    fn wrapper_cannot_be_escaped() {
        let mut sb = sandbox();
        // These would close our wrapper early if pasted naively; they either fail to parse or
        // keep eval semantics, and never run code at compile time.
        let err = sb.compile_expr(
            "1); }); globalThis.pwned = 1; (function(){ return (1",
            PARAMS,
        );
        assert!(matches!(err, Err(ExprError::Syntax { .. })), "{err:?}");
        let err = sb.compile_expr("1); globalThis.pwned = 1; (2", PARAMS);
        assert!(matches!(err, Err(ExprError::Syntax { .. })), "{err:?}");
        // Even "balanced" escapes are rejected: the text must parse as a program on its own.
        let err = sb.compile_expr("1) + (globalThis.pwned = 1", PARAMS);
        assert!(matches!(err, Err(ExprError::Syntax { .. })), "{err:?}");
        assert_eq!(eval_json(&mut sb, "typeof pwned"), json!("undefined"));
        let err = sb.compile_script("}); globalThis.pwned2 = 1; (function(){");
        assert!(matches!(err, Err(ExprError::Syntax { .. })), "{err:?}");
        assert_eq!(eval_json(&mut sb, "typeof pwned2"), json!("undefined"));
    }

    #[test]
    fn completion_values_match_eval() {
        let mut sb = sandbox();
        let cases: &[(&str, Json, Path)] = &[
            ("1 + 1", json!(2), Path::Expr),
            ("1 + 1;", json!(2), Path::Expr),
            ("  1 + 1 ;; \n", json!(2), Path::Expr),
            ("1 + 1 // trailing comment;", json!(2), Path::Expr),
            ("a = 1, a + 1", json!(2), Path::Expr),
            ("var a = 1; a + 1", json!(2), Path::Split),
            ("var a = 1\na + 1", json!(2), Path::Split),
            ("var a = 1; a + 1;", json!(2), Path::Split),
            ("var ok = false\n!ok", json!(true), Path::Split),
            ("'use strict'; var q = 4; q", json!(4), Path::Split),
            ("if (true) { var a = 3 } a", json!(3), Path::Split),
            ("var x = 1; x // the end", json!(1), Path::Split),
            ("var s = 'a;b'; s", json!("a;b"), Path::Split),
            ("var t = `x;${1}`; t", json!("x;1"), Path::Split),
            // A boundary inside a line comment must not be used.
            ("var a = 1 // note; 2", Json::Null, Path::Eval),
            // `a\n(b)` is a call, not two statements.
            (
                "var f = function(x){ return x * 2 }\n(21)",
                Json::Null,
                Path::Eval,
            ),
            (
                "var g = function(){ return 5 }; var r = g\n(); r",
                json!(5),
                Path::Split,
            ),
            // Blocks and declarations are not expressions at statement start.
            ("{a: 1}", json!(1), Path::Eval),
            ("1; {a: 1}", json!(1), Path::Eval),
            ("function f(){}", Json::Null, Path::Eval),
            ("1; function f(){}", json!(1), Path::Eval),
            ("if (true) { 7 } else { 8 }", json!(7), Path::Eval),
            ("var a = 1; if (a) { 'yes' }", json!("yes"), Path::Eval),
            ("", Json::Null, Path::Expr),
            ("  // nothing\n;", Json::Null, Path::Expr),
        ];
        for (src, expected, path) in cases {
            let f = sb
                .compile_expr(src, PARAMS)
                .unwrap_or_else(|e| panic!("{src:?}: {e}"));
            let got = sb
                .call_json(f, &[])
                .unwrap_or_else(|e| panic!("{src:?}: {e}"));
            assert_eq!(&got, expected, "{src:?}");
            assert_eq!(sb.path_of(f), Some(*path), "{src:?}");
        }
    }

    #[test]
    fn sloppy_mode_globals_do_not_break_later_calls() {
        let mut sb = sandbox();
        let src = "var n = 0; for (i = 0; i < 3; i++) { n += i } n";
        let f = sb.compile_expr(src, PARAMS).expect("compiles");
        let g = sb
            .compile_expr("for (i = 10; i < 12; i++) {} i", PARAMS)
            .expect("compiles");
        for _ in 0..3 {
            assert_eq!(sb.call_json(f, &[]).expect("runs"), json!(3));
            assert_eq!(sb.call_json(g, &[]).expect("runs"), json!(12));
        }
        // `var` declarations stay local to the call, even on the eval path.
        let h = sb
            .compile_expr(
                "var seen = typeof counter; var counter = 1; if (1) { seen }",
                PARAMS,
            )
            .expect("compiles");
        assert_eq!(sb.path_of(h), Some(Path::Eval));
        assert_eq!(sb.call_json(h, &[]).expect("runs"), json!("undefined"));
        assert_eq!(sb.call_json(h, &[]).expect("runs"), json!("undefined"));
    }

    #[test]
    fn dt_gateway_condition() {
        let mut sb = sandbox();
        let topic = json!({
            "applications": {"apps": [
                {"id": "application_1480063135007_0543", "name": "WordCount", "state": "RUNNING"},
                {"id": "application_1480063135007_0544", "name": "CsvParser", "state": "RUNNING"}
            ]},
            "applications.application_1480063135007_0543":
                {"id": "application_1480063135007_0543", "name": "WordCount", "state": "RUNNING"}
        });
        for (k, v) in topic.as_object().expect("object") {
            sb.set_global_entry("_topic", k, v).expect("set");
        }
        let src = "var alert=false;var appId=undefined;var appsInfo=_topic['applications'].apps;for(i=0;i<appsInfo.length;i++){if(appsInfo[i].name=='WordCount'){appId=appsInfo[i].id;break}}if(appId!=undefined){alert=_topic['applications.'+appId]['state']!='RUNNING'}alert;";
        let f = sb
            .compile_expr(src, &["event", "e", "source", "time", "_topic_unused"])
            .expect("compiles");
        assert_eq!(
            sb.path_of(f),
            Some(Path::Split),
            "must not re-parse per call"
        );
        let ev = sb.load(&json!({})).expect("load");
        let args = [Arg::Val(ev), Arg::Val(ev), Arg::Str("dt"), Arg::Num(0.0)];
        assert!(!sb.call_bool(f, &args).expect("runs"));
        assert!(!sb.call_bool(f, &args).expect("runs twice"));
        sb.set_global_entry(
            "_topic",
            "applications.application_1480063135007_0543",
            &json!({"id": "application_1480063135007_0543", "name": "WordCount", "state": "FAILED"}),
        )
        .expect("set");
        assert!(sb.call_bool(f, &args).expect("runs"));

        sb.set_global_entry("_topic", "cluster.metrics", &json!({"numAppsRunning": 6}))
            .expect("set");
        let g = sb
            .compile_expr("_topic['cluster.metrics'].numAppsRunning > 5", PARAMS)
            .expect("compiles");
        assert_eq!(sb.path_of(g), Some(Path::Expr));
        assert!(sb.call_bool(g, &[]).expect("runs"));
        sb.set_global_entry("_topic", "cluster.metrics", &json!({"numAppsRunning": 5}))
            .expect("set");
        assert!(!sb.call_bool(g, &[]).expect("runs"));
    }

    #[test]
    fn script_state_and_actions() {
        let mut sb = sandbox();
        let s = sb
            .compile_script(
                "function handle(event, ctx){ ctx.state.n = (ctx.state.n||0)+1; if (ctx.state.n >= 3) ctx.fire({key: event.host, summary: 'x', value: ctx.state.n}); if (event.done) ctx.resolve(event.host); ctx.emit('derived', {n: ctx.state.n}); }",
            )
            .expect("compiles");
        let mut state = Json::Null;
        let ev = sb.load(&json!({"host": "h1"})).expect("load");
        for n in 1..=3 {
            let out = sb.call_script(s, ev, &state).expect("runs");
            let mut expected = Vec::new();
            if n >= 3 {
                expected.push(ScriptAction::Fire(
                    json!({"key": "h1", "summary": "x", "value": n}),
                ));
            }
            expected.push(ScriptAction::Emit {
                source: "derived".into(),
                event: json!({"n": n}),
            });
            assert_eq!(out.actions, expected);
            assert_eq!(out.state, json!({"n": n}));
            state = out.state;
        }
        let done = sb.load(&json!({"host": "h1", "done": true})).expect("load");
        let out = sb.call_script(s, done, &state).expect("runs");
        assert_eq!(out.state, json!({"n": 4}));
        assert_eq!(
            out.actions,
            vec![
                ScriptAction::Fire(json!({"key": "h1", "summary": "x", "value": 4})),
                ScriptAction::Resolve("h1".into()),
                ScriptAction::Emit {
                    source: "derived".into(),
                    event: json!({"n": 4})
                },
            ]
        );
        // The caller's state is not modified in place.
        assert_eq!(state, json!({"n": 3}));
    }

    #[test]
    fn script_details() {
        let mut sb = sandbox();
        let ev = sb.load(&json!({"k": 1})).expect("load");
        // Reassigning ctx.state, firing a mutated object (snapshotted), helper functions.
        let s = sb
            .compile_script(
                "const LEVEL = 'crit';\nfunction mk(e) { return {key: 'k' + e.k, severity: LEVEL} }\nfunction handle(event, ctx) {\n  var a = mk(event); ctx.fire(a); a.key = 'changed';\n  ctx.resolve(42); ctx.state = {replaced: true, nan: NaN};\n}",
            )
            .expect("compiles");
        let out = sb.call_script(s, ev, &json!({"old": 1})).expect("runs");
        assert_eq!(out.state, json!({"replaced": true, "nan": null}));
        assert_eq!(
            out.actions,
            vec![
                ScriptAction::Fire(json!({"key": "k1", "severity": "crit"})),
                ScriptAction::Resolve("42".into()),
            ]
        );
        // A throw discards actions.
        let t = sb
            .compile_script(
                "function handle(event, ctx) { ctx.fire({key: 'a'}); throw new RangeError('bad') }",
            )
            .expect("compiles");
        assert_eq!(
            sb.call_script(t, ev, &json!({})),
            Err(ExprError::Thrown("RangeError: bad".into()))
        );
        // async handle works, and its rejection is an error.
        let a = sb
            .compile_script("async function handle(event, ctx) { await null; ctx.fire({key: 'late'}); ctx.state.x = 1 }")
            .expect("compiles");
        let out = sb.call_script(a, ev, &Json::Null).expect("runs");
        assert_eq!(
            out.actions,
            vec![ScriptAction::Fire(json!({"key": "late"}))]
        );
        assert_eq!(out.state, json!({"x": 1}));
        let r = sb
            .compile_script(
                "async function handle(event, ctx) { await null; throw new Error('later') }",
            )
            .expect("compiles");
        assert_eq!(
            sb.call_script(r, ev, &Json::Null),
            Err(ExprError::Thrown("Error: later".into()))
        );
        // Missing handle.
        assert!(matches!(
            sb.compile_script("function hndl(e, c) {}"),
            Err(ExprError::Invalid(_))
        ));
        // Scripts have their own scopes.
        let other = sb
            .compile_script(
                "const LEVEL = 'other'; function handle(event, ctx) { ctx.resolve(LEVEL) }",
            )
            .expect("compiles");
        let out = sb.call_script(other, ev, &Json::Null).expect("runs");
        assert_eq!(out.actions, vec![ScriptAction::Resolve("other".into())]);
        // A condition is not a script.
        let c = sb.compile_expr("1", PARAMS).expect("compiles");
        assert!(matches!(
            sb.call_script(c, ev, &Json::Null),
            Err(ExprError::Invalid(_))
        ));
    }

    #[test]
    fn params_name_the_arguments() {
        let mut sb = sandbox();
        let f = sb
            .compile_expr("e.v + time", &["event", "e", "source", "time"])
            .expect("compiles");
        let ev = sb.load(&json!({"v": 2})).expect("load");
        let args = [Arg::Val(ev), Arg::Val(ev), Arg::Str("s"), Arg::Num(5.0)];
        // JSON has one number type: integral results come back as integers.
        assert_eq!(sb.call_json(f, &args).expect("runs"), json!(7));
        let g = sb
            .compile_expr(
                "event === e && source + ':' + event.v",
                &["event", "e", "source", "time"],
            )
            .expect("compiles");
        assert_eq!(sb.call_json(g, &args).expect("runs"), json!("s:2"));
        let j = json!({"v": 10});
        assert_eq!(
            sb.call_json(
                f,
                &[Arg::Json(&j), Arg::Json(&j), Arg::Str("s"), Arg::Num(1.0)]
            )
            .expect("runs"),
            json!(11)
        );
        assert!(matches!(
            sb.compile_expr("1", &["a b"]),
            Err(ExprError::Invalid(_))
        ));
        assert!(matches!(
            sb.compile_expr("1", &["eval"]),
            Err(ExprError::Invalid(_))
        ));
    }

    #[test]
    fn json_conversion() {
        let mut sb = sandbox();
        assert_eq!(eval_json(&mut sb, "undefined"), Json::Null);
        assert_eq!(eval_json(&mut sb, "NaN"), Json::Null);
        assert_eq!(eval_json(&mut sb, "-Infinity"), Json::Null);
        assert_eq!(eval_json(&mut sb, "(function(){})"), Json::Null);
        assert_eq!(
            eval_json(
                &mut sb,
                "({b: 1, a: [1.5, 'x', null, true, undefined, NaN], f: function(){}})"
            ),
            json!({"b": 1, "a": [1.5, "x", null, true, null, null]})
        );
        let f = sb.compile_expr("event", PARAMS).expect("compiles");
        let value = json!({"z": 1, "a": {"n": -3, "big": 1e300, "s": "ü\u{2028}"}, "arr": [[]], "i": 4294967296u64});
        let ev = sb.load(&value).expect("load");
        assert_eq!(sb.call_json(f, &[Arg::Val(ev)]).expect("runs"), value);
        let ev = sb.load_json(&value.to_string()).expect("load");
        assert_eq!(sb.call_json(f, &[Arg::Val(ev)]).expect("runs"), value);
        let cyc = sb
            .compile_expr("var o = {}; o.o = o; o", PARAMS)
            .expect("compiles");
        assert!(matches!(sb.call_json(cyc, &[]), Err(ExprError::Thrown(_))));
    }

    #[test]
    fn loaded_values_are_frozen() {
        let mut sb = sandbox();
        let writer = sb
            .compile_expr(
                "event.a = 5, event.list.push(1), event.nested.x = 9",
                PARAMS,
            )
            .expect("compiles");
        let reader = sb
            .compile_expr("[event.a, event.list.length, event.nested.x]", PARAMS)
            .expect("compiles");
        let ev = sb
            .load_json(r#"{"a": 1, "list": [], "nested": {"x": 0}}"#)
            .expect("load");
        // Pushing onto a frozen array throws even in sloppy mode.
        assert!(matches!(
            sb.call_bool(writer, &[Arg::Val(ev)]),
            Err(ExprError::Thrown(_))
        ));
        assert_eq!(
            sb.call_json(reader, &[Arg::Val(ev)]).expect("runs"),
            json!([1, 0, 0])
        );
    }

    #[test]
    fn dropping_after_failures_does_not_abort() {
        for src in [
            "while(true){}",
            "var a=[]; while(true) a.push({x: [1,2,3]})",
            "Promise.resolve().then(function f(){ Promise.resolve().then(f) }), true",
        ] {
            let mut sb = sandbox_with_budget(Duration::from_millis(50));
            let f = sb.compile_expr(src, PARAMS).expect("compiles");
            let _ = sb.call_bool(f, &[]);
            let _ = sb.call_bool(f, &[]);
            drop(sb);
        }
        // None of these needed the leak-instead-of-abort escape hatch.
        assert_eq!(Sandbox::leaked_runtimes(), 0);
    }

    /// What one rule does to the shared runtime, the next rule must not see (issue 7, item 3).
    #[test]
    fn functions_of_other_scopes_see_no_pollution() {
        let mut sb = sandbox();
        sb.set_global_entry("_topic", "t", &json!({"v": 1}))
            .expect("set");
        let (a, b) = (sb.new_scope(), sb.new_scope());
        let reader_src = "[typeof ({}).polluted, [1].includes(2), typeof seen, typeof globalThis.foo, \
             typeof globalThis.seen, typeof JSON.parse, Math.max(1, 2), typeof _topic.x, _topic.t.v, \
             typeof event.polluted, typeof (async function () {}).polluted, \
             typeof [][Symbol.iterator]().polluted, typeof (function* () {})().polluted, \
             String.prototype.trim.call(' a ')]";
        let expected = json!([
            "undefined",
            false,
            "undefined",
            "undefined",
            "undefined",
            "function",
            2,
            "undefined",
            1,
            "undefined",
            "undefined",
            "undefined",
            "undefined",
            "a"
        ]);
        let reader = sb.compile_expr_in(b, reader_src, PARAMS).expect("compiles");
        let ev = sb.load(&json!({"k": 1})).expect("load");
        assert_eq!(
            sb.call_json(reader, &[Arg::Val(ev)]).expect("runs"),
            expected
        );
        let polluter = sb
            .compile_expr_in(
                a,
                "Object.prototype.polluted = 1; Array.prototype.includes = function () { return true }; \
                 seen = 1; globalThis.foo = 2; this.bar = 3; JSON.parse = null; Math.max = null; \
                 _topic.x = 1; _topic.t = {v: 2}; delete _topic.t; \
                 event.constructor.prototype.polluted = 1; event.__proto__.polluted = 1; \
                 Object.getPrototypeOf(async function () {}).polluted = 1; \
                 Object.getPrototypeOf(Object.getPrototypeOf([][Symbol.iterator]())).polluted = 1; \
                 Object.getPrototypeOf(function* () {}).prototype.polluted = 1; \
                 String.prototype.trim = function () { return 'x' }; \
                 seen",
                PARAMS,
            )
            .expect("compiles");
        // Sloppy mode: the writes are ignored; the rule's own stray variable works.
        assert_eq!(
            sb.call_json(polluter, &[Arg::Val(ev)]).expect("runs"),
            json!(1)
        );
        assert_eq!(
            sb.call_json(reader, &[Arg::Val(ev)]).expect("runs"),
            expected
        );
        // A function compiled later in another scope sees nothing either.
        let late = sb.compile_expr(reader_src, PARAMS).expect("compiles");
        assert_eq!(sb.call_json(late, &[Arg::Val(ev)]).expect("runs"), expected);
        // Functions of the same scope share their undeclared variables (a rule's `when` and
        // `value`), and keep them between calls.
        let same = sb
            .compile_expr_in(a, "seen = seen + 1", PARAMS)
            .expect("compiles");
        assert_eq!(sb.call_json(same, &[]).expect("runs"), json!(2));
        assert_eq!(
            sb.call_json(polluter, &[Arg::Val(ev)]).expect("runs"),
            json!(1)
        );
        // Strict code is told.
        let strict = sb
            .compile_expr("'use strict'; Object.prototype.polluted = 1", PARAMS)
            .expect("compiles");
        assert!(
            matches!(sb.call_json(strict, &[]), Err(ExprError::Thrown(m)) if m.starts_with("TypeError")),
        );
        // A rebuild (after a timeout) locks the new runtime down too.
        let spin = sb
            .compile_expr("while (true) {}", PARAMS)
            .expect("compiles");
        assert!(matches!(
            sb.call_bool(spin, &[]),
            Err(ExprError::Timeout(_))
        ));
        let ev = sb.load(&json!({"k": 1})).expect("load");
        assert_eq!(
            sb.call_json(polluter, &[Arg::Val(ev)]).expect("runs"),
            json!(1)
        );
        assert_eq!(
            sb.call_json(reader, &[Arg::Val(ev)]).expect("runs"),
            expected
        );
    }

    /// Freezing the intrinsics must not break what programs do with their own objects.
    #[test]
    fn own_objects_still_take_what_frozen_prototypes_have() {
        let mut sb = sandbox();
        let src = "var e = new Error('m'); e.name = 'Custom'; e.message = 'changed'; \
                   class E extends Error { constructor(m) { super(m); this.name = 'E' } } \
                   var o = {}; o.toString = function () { return 'me' }; o.valueOf = function () { return 7 }; \
                   function F() {} F.prototype.greet = function () { return 'hi' }; \
                   var a = [3, 1, 2]; a.sort(); a.push(4); var m = new Map([[1, 2]]); \
                   [String(e), new E('x').name, String(o), o + 1, new F().greet(), a.join(), m.get(1), \
                    JSON.stringify({k: [1]}), /b+/.test('abbc'), 'x'.padStart(3, '-')]";
        assert_eq!(
            eval_json(&mut sb, src),
            json!([
                "Custom: changed",
                "E",
                "me",
                8,
                "hi",
                "1,2,3,4",
                2,
                "{\"k\":[1]}",
                true,
                "--x"
            ])
        );
        // A script's top-level helpers and stray variables stay its own.
        let s = sb
            .compile_script(
                "count = 0; function handle(event, ctx) { count++; ctx.state.n = count }",
            )
            .expect("compiles");
        let t = sb
            .compile_script("function handle(event, ctx) { ctx.state.seen = typeof count }")
            .expect("compiles");
        let ev = sb.load(&json!({})).expect("load");
        assert_eq!(
            sb.call_script(s, ev, &Json::Null).expect("runs").state,
            json!({"n": 1})
        );
        assert_eq!(
            sb.call_script(s, ev, &Json::Null).expect("runs").state,
            json!({"n": 2})
        );
        assert_eq!(
            sb.call_script(t, ev, &Json::Null).expect("runs").state,
            json!({"seen": "undefined"})
        );
        // Only the globals Rust fills in can be set.
        assert!(matches!(
            sb.set_global_entry("other", "k", &json!(1)),
            Err(ExprError::Invalid(_))
        ));
    }

    /// `cargo test --release -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn perf() {
        let mut sb = sandbox();
        let event = r#"{"kind":"disk","host":"web-01.example.com","mount":"/var/lib/data","used_pct":93.5,"free_bytes":1073741824,"total_bytes":17179869184,"labels":{"env":"prod","team":"storage","region":"eu-west-1"},"ts":"2024-05-01T12:00:00Z","tags":["a","b","c"],"msg":"disk usage above threshold on data volume"}"#;
        println!("event is {} bytes", event.len());
        let ids: Vec<FnId> = (0..1000)
            .map(|i| {
                sb.compile_expr(
                    &format!("event.kind == 'disk' && event.used_pct > {}", 50 + i % 50),
                    PARAMS,
                )
                .expect("compiles")
            })
            .collect();
        let as_json: Json = serde_json::from_str(event).expect("json");
        let rounds = 200;

        let start = Instant::now();
        for _ in 0..rounds * 10 {
            let v = sb.load_json(event).expect("load");
            sb.release(v);
        }
        let per_load_json = start.elapsed() / (rounds * 10);
        let start = Instant::now();
        for _ in 0..rounds * 10 {
            let v = sb.load(&as_json).expect("load");
            sb.release(v);
        }
        let per_load = start.elapsed() / (rounds * 10);

        let mut hits = 0u64;
        let start = Instant::now();
        for _ in 0..rounds {
            let v = sb.load_json(event).expect("load");
            let args = [Arg::Val(v), Arg::Val(v), Arg::Str("disk"), Arg::Num(0.0)];
            for &id in &ids {
                hits += u64::from(sb.call_bool(id, &args).expect("runs"));
            }
            sb.release(v);
        }
        let per_call = start.elapsed() / (rounds * ids.len() as u32);
        assert!(hits > 0);
        let start = Instant::now();
        let dt = sb
            .compile_expr("var a = event.used_pct; var b = a > 90; b;", PARAMS)
            .expect("compiles");
        let compile = start.elapsed();
        let v = sb.load_json(event).expect("load");
        let start = Instant::now();
        for _ in 0..rounds * 100 {
            sb.call_bool(dt, &[Arg::Val(v)]).expect("runs");
        }
        let per_split_call = start.elapsed() / (rounds * 100);
        let spin = sb.compile_expr("while(true){}", PARAMS).expect("compiles");
        let start = Instant::now();
        assert!(sb.call_bool(spin, &[]).is_err());
        println!(
            "10 ms budget: while(true) stopped after {:?}",
            start.elapsed()
        );
        let start = Instant::now();
        let _ = sb.call_bool(ids[0], &[]);
        println!(
            "first call after that rebuild (1001 recompiles) took {:?}",
            start.elapsed()
        );
        println!(
            "load_json: {} ns, load: {} ns, call_bool: {} ns (1 arg split form: {} ns, compiled in {:?})",
            per_load_json.as_nanos(),
            per_load.as_nanos(),
            per_call.as_nanos(),
            per_split_call.as_nanos(),
            compile
        );
    }
}

/// Micro-benchmark of what isolating rules costs; see BENCHMARKS.md ("Rule isolation").
/// `cargo test -p tellify-core --release --lib isolation_cost -- --ignored --nocapture`;
/// `TELLIFY_ISOLATION_ROUNDS=N` sets the rounds (small for callgrind).
#[cfg(test)]
mod isolation_bench {
    use super::*;
    use serde_json::json;

    const PARAMS: &[&str] = &["event", "e", "source", "time"];
    const EVENT: &str = r#"{"kind":"disk","host":"web-01.example.com","mount":"/var/lib/data","used_pct":93.5,"free_bytes":1073741824,"labels":{"env":"prod","team":"storage"},"tags":["a","b","c"]}"#;

    fn per_call(sb: &mut Sandbox, src: &str, rounds: u32) -> Duration {
        let f = sb.compile_expr(src, PARAMS).expect("compiles");
        let v = sb.load_json(EVENT).expect("load");
        let args = [Arg::Val(v), Arg::Val(v), Arg::Str("disk"), Arg::Num(0.0)];
        for _ in 0..100 {
            sb.call_bool(f, &args).expect("runs");
        }
        let start = Instant::now();
        for _ in 0..rounds {
            sb.call_bool(f, &args).expect("runs");
        }
        let took = start.elapsed() / rounds;
        sb.release(v);
        took
    }

    #[test]
    #[ignore]
    fn isolation_cost() {
        let rounds: u32 = std::env::var("TELLIFY_ISOLATION_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(200_000);
        let mut sb = Sandbox::new(Limits::default()).expect("sandbox");
        sb.set_global_entry("_topic", "cluster", &json!({"apps": [{"name": "a", "state": "RUNNING"}, {"name": "WordCount", "state": "RUNNING"}]}))
            .expect("topic");
        let cases = [
            ("simple", "event.kind == 'disk' && event.used_pct > 90"),
            ("global Math", "Math.max(event.used_pct, 10) > 90"),
            ("_topic", "_topic['cluster'].apps.length > 1"),
            (
                "stray loop var",
                "var found = false; for (i = 0; i < event.tags.length; i++) { if (event.tags[i] == 'c') found = true } found",
            ),
            (
                "method call",
                "event.tags.includes('b') && event.host.startsWith('web')",
            ),
        ];
        // TELLIFY_ISOLATION_CASE=NAME runs one case only (for instruction counts).
        let only = std::env::var("TELLIFY_ISOLATION_CASE").ok();
        for (name, src) in cases {
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let took = per_call(&mut sb, src, rounds);
            println!("{name:>16}: {} ns per call", took.as_nanos());
        }
        if only.is_some() {
            return;
        }
        let s = sb
            .compile_script("function handle(event, ctx) { ctx.state.n = (ctx.state.n || 0) + 1; if (event.used_pct > 90) ctx.fire({key: event.host}) }")
            .expect("compiles");
        let v = sb.load_json(EVENT).expect("load");
        let state = json!({"n": 1});
        let start = Instant::now();
        for _ in 0..rounds / 10 {
            sb.call_script(s, v, &state).expect("runs");
        }
        println!(
            "{:>16}: {} ns per call",
            "script",
            (start.elapsed() / (rounds / 10)).as_nanos()
        );
        let n = 50;
        let start = Instant::now();
        let boxes: Vec<Sandbox> = (0..n)
            .map(|_| Sandbox::new(Limits::default()).expect("sandbox"))
            .collect();
        println!(
            "new sandbox: {} µs; heap {} bytes",
            (start.elapsed() / n).as_micros(),
            boxes[0].heap_bytes()
        );
        // The alternative: one context per rule inside the owner's runtime.
        let rt = Runtime::new().expect("runtime");
        let base = rt.memory_usage().memory_used_size;
        let start = Instant::now();
        let contexts: Vec<Context> = (0..n)
            .map(|_| Context::full(&rt).expect("context"))
            .collect();
        let took = start.elapsed() / n;
        let per_context = (rt.memory_usage().memory_used_size - base) / i64::from(n);
        println!(
            "context per rule: {} µs and {per_context} bytes per context",
            took.as_micros()
        );
        drop(contexts);
    }
}
