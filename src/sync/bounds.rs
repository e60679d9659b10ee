//! Static bounds on templates (pure): before a template runs, every value it can build is
//! bounded from the sizes of the fetched values, and a template that could build one
//! larger than [`MAX_VALUE_BYTES`] is refused, naming the line.
//!
//! Fuel bounds the number of steps, not the memory one step takes: `"x" * 10000` or a
//! `replace` of a string by itself allocates megabytes in a single step, and a loop that
//! doubles a value needs only a few dozen. So the bound is proven before rendering, over
//! the parsed template, with sizes counted in bytes (a list's size also bounds how many
//! items it has). The analysis is conservative: a template it cannot bound (a macro,
//! `namespace()`, a value that grows in a loop, a filter it does not know) is refused
//! with a message that says which construct, rather than run.

use std::collections::BTreeMap;

use minijinja::machinery::ast::{self, BinOpKind, CallArg, Expr, Stmt};

/// The largest value (string, list, map) a template may build, and the most it may
/// output: 64 KiB.
pub const MAX_VALUE_BYTES: u64 = 64 * 1024;
/// Size bound of a number, boolean or `none`, printed.
const SCALAR: u64 = 48;

/// Why a template was refused: the line and what the problem is, never a value.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub line: u16,
    pub reason: String,
}

type Checked<T> = std::result::Result<T, Refusal>;

/// Proves that `source`, rendered with variables of at most `sizes` bytes each, builds no
/// value and no output larger than [`MAX_VALUE_BYTES`].
pub fn check(source: &str, sizes: &BTreeMap<String, u64>) -> Checked<()> {
    let parsed =
        minijinja::machinery::parse(source, "template", Default::default()).map_err(|e| {
            Refusal {
                line: e.line().unwrap_or(0) as u16,
                reason: format!("it does not parse: {}", e.kind()),
            }
        })?;
    let mut scope = Scope {
        vars: sizes.clone(),
        in_loop: false,
    };
    let out = scope.stmt(&parsed)?;
    limit(out, 0, "its output").map(|_| ())
}

fn limit(size: u64, line: u16, what: &str) -> Checked<u64> {
    if size > MAX_VALUE_BYTES {
        return Err(Refusal {
            line,
            reason: format!(
                "{what} could reach {} bytes; the limit is {MAX_VALUE_BYTES}",
                if size == u64::MAX {
                    "unbounded".to_string()
                } else {
                    size.to_string()
                }
            ),
        });
    }
    Ok(size)
}

fn refuse<T>(line: u16, reason: impl Into<String>) -> Checked<T> {
    Err(Refusal {
        line,
        reason: reason.into(),
    })
}

#[derive(Clone)]
struct Scope {
    /// Size bound of each variable in scope.
    vars: BTreeMap<String, u64>,
    in_loop: bool,
}

impl Scope {
    /// The bound on what a statement (list) outputs.
    fn stmts(&mut self, body: &[Stmt<'_>]) -> Checked<u64> {
        let mut total = 0u64;
        for s in body {
            total = total.saturating_add(self.stmt(s)?);
        }
        Ok(total)
    }

    fn stmt(&mut self, stmt: &Stmt<'_>) -> Checked<u64> {
        match stmt {
            Stmt::Template(t) => self.stmts(&t.children),
            Stmt::EmitRaw(r) => Ok(r.raw.len() as u64),
            Stmt::EmitExpr(e) => self.expr(&e.expr),
            Stmt::IfCond(c) => {
                self.expr(&c.expr)?;
                let mut other = self.clone();
                let yes = self.stmts(&c.true_body)?;
                let no = other.stmts(&c.false_body)?;
                self.join(&other);
                Ok(yes.max(no))
            }
            Stmt::ForLoop(f) => self.for_loop(f, f.span().start_line),
            Stmt::WithBlock(w) => {
                let mut inner = self.clone();
                for (target, value) in &w.assignments {
                    let size = inner.expr(value)?;
                    inner.assign(target, size)?;
                }
                inner.stmts(&w.body)
            }
            Stmt::Set(s) => {
                let size = self.expr(&s.expr)?;
                self.assign(&s.target, size)?;
                Ok(0)
            }
            Stmt::SetBlock(s) => {
                let line = s.span().start_line;
                let mut size = limit(self.clone().stmts(&s.body)?, line, "a captured block")?;
                if let Some(filter) = &s.filter {
                    size = self.filtered(filter, size)?;
                }
                self.assign(&s.target, size)?;
                Ok(0)
            }
            Stmt::AutoEscape(a) => {
                self.expr(&a.enabled)?;
                self.stmts(&a.body)
            }
            Stmt::FilterBlock(f) => {
                let line = f.span().start_line;
                let body = limit(self.clone().stmts(&f.body)?, line, "a filter block")?;
                self.filtered(&f.filter, body)
            }
            Stmt::Do(d) => self.call(&d.call, d.span().start_line),
            other => refuse(
                line_of_stmt(other),
                "only expressions, if, for, set, with and filter blocks are allowed in templates (no macros, blocks, imports or includes)",
            ),
        }
    }

    fn for_loop(&mut self, f: &ast::ForLoop<'_>, line: u16) -> Checked<u64> {
        if f.recursive {
            return refuse(line, "recursive loops are not allowed in templates");
        }
        let items = self.expr(&f.iter)?;
        // One pass to learn what the body assigns, a second to see whether it grows.
        let mut first = self.clone();
        first.in_loop = true;
        first.assign(&f.target, items)?;
        first.vars.insert("loop".into(), SCALAR);
        if let Some(filter) = &f.filter_expr {
            first.expr(filter)?;
        }
        let body = first.stmts(&f.body)?;
        let mut second = first.clone();
        second.assign(&f.target, items)?;
        second.stmts(&f.body)?;
        if let Some((name, _)) = second
            .vars
            .iter()
            .find(|(name, size)| first.vars.get(*name) != Some(size))
        {
            return refuse(
                line,
                format!(
                    "variable {name:?} grows with every pass of the loop; build the value without accumulating it"
                ),
            );
        }
        let else_out = self.clone().stmts(&f.else_body)?;
        // A loop runs at most once per item, and a value of `items` bytes has at most that
        // many items.
        limit(
            items.saturating_mul(body).max(else_out),
            line,
            "the loop's output",
        )
    }

    /// Merges the bounds of another branch: the larger of each.
    fn join(&mut self, other: &Scope) {
        for (name, size) in &other.vars {
            let entry = self.vars.entry(name.clone()).or_insert(0);
            *entry = (*entry).max(*size);
        }
    }

    fn assign(&mut self, target: &Expr<'_>, size: u64) -> Checked<()> {
        match target {
            Expr::Var(v) => {
                self.vars.insert(v.id.to_string(), size);
                Ok(())
            }
            // Unpacking: each name gets at most the whole.
            Expr::List(l) => l.items.iter().try_for_each(|t| self.assign(t, size)),
            Expr::Tuple(t) => t.items.iter().try_for_each(|t| self.assign(t, size)),
            other => refuse(
                other.span().start_line,
                "only plain variables can be assigned in templates (no namespace attributes)",
            ),
        }
    }

    /// The bound on the size of a value an expression builds, refusing past the limit.
    fn expr(&mut self, expr: &Expr<'_>) -> Checked<u64> {
        let line = expr.span().start_line;
        let size = self.expr_unchecked(expr, line)?;
        limit(size, line, &format!("a {}", expr.description()))
    }

    fn expr_unchecked(&mut self, expr: &Expr<'_>, line: u16) -> Checked<u64> {
        Ok(match expr {
            // Strict undefined: a name that is not a variable fails when rendered.
            Expr::Var(v) => self.vars.get(v.id).copied().unwrap_or(0),
            Expr::Const(c) => match c.value.as_str() {
                Some(text) => text.len() as u64,
                None => c.value.to_string().len() as u64 + 2,
            },
            Expr::Slice(s) => {
                for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(part)?;
                }
                self.expr(&s.expr)?
            }
            Expr::UnaryOp(u) => {
                self.expr(&u.expr)?;
                SCALAR
            }
            Expr::BinOp(b) => self.bin_op(b, line)?,
            Expr::Compare(c) => {
                self.expr(&c.expr)?;
                for op in &c.ops {
                    self.expr(&op.expr)?;
                }
                SCALAR
            }
            Expr::IfExpr(i) => {
                self.expr(&i.test_expr)?;
                let yes = self.expr(&i.true_expr)?;
                let no = match &i.false_expr {
                    Some(e) => self.expr(e)?,
                    None => 0,
                };
                yes.max(no)
            }
            Expr::Filter(f) => {
                let input = match &f.expr {
                    Some(e) => self.expr(e)?,
                    None => 0,
                };
                self.filter(f.name, input, &f.args, line)?
            }
            Expr::Test(t) => {
                self.expr(&t.expr)?;
                self.args(&t.args)?;
                SCALAR
            }
            // A part is never larger than the whole.
            Expr::GetAttr(g) => self.expr(&g.expr)?,
            Expr::GetItem(g) => {
                self.expr(&g.subscript_expr)?;
                self.expr(&g.expr)?
            }
            Expr::Call(c) => self.call(c, line)?,
            Expr::List(l) => self.items(&l.items)?,
            Expr::Tuple(t) => self.items(&t.items)?,
            Expr::Map(m) => self.items(&m.keys)?.saturating_add(self.items(&m.values)?),
        })
    }

    fn items(&mut self, items: &[Expr<'_>]) -> Checked<u64> {
        let mut total = 2u64;
        for item in items {
            total = total.saturating_add(self.expr(item)?).saturating_add(2);
        }
        Ok(total)
    }

    fn bin_op(&mut self, b: &ast::BinOp<'_>, line: u16) -> Checked<u64> {
        let left = self.expr(&b.left)?;
        let right = self.expr(&b.right)?;
        Ok(match b.op {
            BinOpKind::Add | BinOpKind::Concat => left.saturating_add(right),
            BinOpKind::ScAnd | BinOpKind::ScOr => left.max(right),
            // String and list repetition: only by a literal count.
            BinOpKind::Mul => match (const_count(&b.left), const_count(&b.right)) {
                (_, Some(n)) => left.saturating_mul(n).max(SCALAR),
                (Some(n), _) => right.saturating_mul(n).max(SCALAR),
                (None, None) if left <= SCALAR && right <= SCALAR => {
                    return refuse(
                        line,
                        "'*' needs a literal number on one side (a repeated string could be any size)",
                    );
                }
                (None, None) => {
                    return refuse(line, "'*' needs a literal number on one side");
                }
            },
            _ => SCALAR,
        })
    }

    fn args(&mut self, args: &[CallArg<'_>]) -> Checked<Vec<u64>> {
        args.iter()
            .map(|arg| match arg {
                CallArg::Pos(e) | CallArg::Kwarg(_, e) => self.expr(e),
                CallArg::PosSplat(e) | CallArg::KwargSplat(e) => refuse(
                    e.span().start_line,
                    "argument unpacking (*args, **kwargs) is not allowed in templates",
                ),
            })
            .collect()
    }

    fn call(&mut self, call: &ast::Call<'_>, line: u16) -> Checked<u64> {
        let args = self.args(&call.args)?;
        let name = match &call.expr {
            Expr::Var(v) => v.id,
            Expr::GetAttr(g) if matches!(&g.expr, Expr::Var(v) if v.id == "loop") => g.name,
            _ => {
                return refuse(
                    line,
                    "only range(), dict() and loop.cycle() can be called in templates",
                );
            }
        };
        match name {
            "range" => {
                // range(stop), range(start, stop[, step]): at most `stop` numbers.
                let stop = call.args.iter().rev().find_map(|a| match a {
                    CallArg::Pos(e) => Some(e),
                    _ => None,
                });
                let count = match (call.args.len(), stop) {
                    (1, Some(e)) => const_count(e),
                    (2 | 3, _) => match &call.args[1] {
                        CallArg::Pos(e) => const_count(e),
                        _ => None,
                    },
                    _ => None,
                };
                match count {
                    Some(n) => Ok(n.saturating_mul(8)),
                    None => refuse(line, "range() needs literal numbers"),
                }
            }
            "dict" => Ok(args
                .iter()
                .map(|a| a.saturating_add(4))
                .sum::<u64>()
                .saturating_add(2)),
            "cycle" | "changed" => Ok(args.into_iter().max().unwrap_or(0).max(SCALAR)),
            other => refuse(line, format!("{other}() cannot be called in templates")),
        }
    }

    fn filtered(&mut self, filter: &Expr<'_>, input: u64) -> Checked<u64> {
        match filter {
            Expr::Filter(f) => {
                let base = match &f.expr {
                    Some(e) => self.filtered(e, input)?,
                    None => input,
                };
                self.filter(f.name, base, &f.args, f.span().start_line)
            }
            other => refuse(other.span().start_line, "a filter block needs a filter"),
        }
    }

    /// The bound on a filter's result from its input's and arguments' bounds.
    fn filter(&mut self, name: &str, input: u64, args: &[CallArg<'_>], line: u16) -> Checked<u64> {
        let sizes = self.args(args)?;
        let arg = |i: usize| sizes.get(i).copied().unwrap_or(0);
        let all: u64 = sizes.iter().copied().fold(0, u64::saturating_add);
        Ok(match name {
            "length" | "count" | "int" | "float" | "abs" | "round" | "bool" | "sum" => SCALAR,
            "safe" | "string" | "trim" | "first" | "last" | "min" | "max" | "reverse" | "sort"
            | "unique" | "list" | "attr" | "select" | "reject" | "map" | "selectattr"
            | "rejectattr" => input.max(SCALAR),
            // Case mapping can turn one character into up to three bytes more.
            "lower" | "upper" | "title" | "capitalize" => input.saturating_mul(3),
            "default" | "d" => input.max(all),
            "items" | "dictsort" | "split" | "lines" | "batch" | "slice" | "groupby" | "chain"
            | "zip" => input
                .saturating_add(all)
                .saturating_mul(3)
                .saturating_add(all),
            "escape" | "e" | "tojson" | "urlencode" => {
                if name == "tojson" && !sizes.is_empty() {
                    // Indentation: up to `indent` bytes per item per level of nesting.
                    input.saturating_mul(input).saturating_mul(6)
                } else {
                    input.saturating_mul(6).max(SCALAR)
                }
            }
            "replace" => {
                // Each occurrence of `old` (at least one byte, or every gap for "") becomes `new`.
                input.saturating_add(input.saturating_add(1).saturating_mul(arg(1)))
            }
            "join" => input.saturating_add(input.saturating_mul(arg(0))),
            "indent" => {
                let width = match args.first() {
                    Some(CallArg::Pos(e)) => const_count(e).unwrap_or(arg(0)),
                    _ => arg(0),
                };
                input.saturating_add(input.saturating_add(1).saturating_mul(width))
            }
            "format" => input.saturating_mul(all.saturating_add(1)),
            other => {
                return refuse(
                    line,
                    format!("the filter {other:?} is not allowed in templates"),
                );
            }
        })
    }
}

/// A literal non-negative integer.
fn const_count(expr: &Expr<'_>) -> Option<u64> {
    match expr {
        Expr::Const(c) => c.value.as_usize().map(|n| n as u64),
        _ => None,
    }
}

fn line_of_stmt(stmt: &Stmt<'_>) -> u16 {
    match stmt {
        Stmt::Macro(m) => m.span().start_line,
        Stmt::CallBlock(c) => c.span().start_line,
        Stmt::Block(b) => b.span().start_line,
        Stmt::Import(i) => i.span().start_line,
        Stmt::FromImport(i) => i.span().start_line,
        Stmt::Extends(e) => e.span().start_line,
        Stmt::Include(i) => i.span().start_line,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> BTreeMap<String, u64> {
        [("username".to_string(), 16), ("password".to_string(), 32)].into()
    }

    fn reason(source: &str) -> String {
        check(source, &sizes()).expect_err(source).reason
    }

    #[test]
    fn ordinary_templates_pass() {
        for source in [
            "postgres://{{ username }}:{{ password }}@db:5432/app",
            "{{ username | upper }}-{{ password | replace('a', 'b') }}",
            "{% for c in password %}{{ c }}{% endfor %}",
            "{% set url = username ~ ':' ~ password %}{{ url | tojson }}",
            "{% if password | length > 8 %}{{ password }}{% else %}short{% endif %}",
            "{{ '-' * 20 }}{{ [username, password] | join(',') }}",
            "{% for i in range(3) %}{{ loop.index }}{{ loop.cycle('a', 'b') }}{% endfor %}",
            "{% with u = username %}{{ u }}{% endwith %}",
            "{% filter upper %}{{ username }}{% endfilter %}",
        ] {
            assert_eq!(check(source, &sizes()), Ok(()), "{source}");
        }
    }

    #[test]
    fn templates_that_could_build_huge_values_are_refused() {
        assert!(
            reason(r#"{% set a="x"*10000 %}{% set b=a|replace("x",a) %}{{ (b~b)|length }}"#)
                .contains("could reach")
        );
        assert!(reason(r#"{{ "x" * 40000 }}{{ "x" * 40000 }}"#).contains("output could reach"));
        assert!(reason(r#"{{ password * (username|length) }}"#).contains("literal number"));
        assert!(
            reason("{% set a = password %}{% for i in range(40) %}{% set a = a ~ a %}{% endfor %}")
                .contains("grows with every pass")
        );
        assert!(reason("{% set ns = namespace(a='x') %}").contains("namespace() cannot be called"));
        assert!(
            reason("{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}")
                .contains("no macros")
        );
        assert!(
            reason("{% for i in range(100000) %}{{ password }}{% endfor %}")
                .contains("could reach")
        );
        assert!(reason("{{ password | pprint }}").contains("\"pprint\" is not allowed"));
        assert!(reason("{% for a in password %}{% for b in password %}{% for c in password %}{{ password }}{% endfor %}{% endfor %}{% endfor %}")
            .contains("could reach"));
    }

    #[test]
    fn refusals_name_the_line_and_no_value() {
        let refusal = check("ok\n{{ password * 5000 }}", &sizes()).unwrap_err();
        assert_eq!(refusal.line, 2);
        assert!(!refusal.reason.contains("password"), "{}", refusal.reason);
    }
}
