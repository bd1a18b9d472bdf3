import Foundation

// MARK: - Syntax tree

enum Literal: Sendable {
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
}

struct Expr: Sendable {
    var kind: ExprKind
    var pos: SourcePos
    /// Height of this subtree; the parser caps it so evaluation (and deallocation) recursion stays shallow.
    var depth: Int

    init(kind: ExprKind, pos: SourcePos) {
        self.kind = kind
        self.pos = pos
        depth = 1 + kind.childDepth
    }
}

struct Keyword: Sendable {
    var name: String
    var value: Expr
}

indirect enum ExprKind: Sendable {
    case literal(Literal)
    case name(String)
    case list([Expr])
    case tuple([Expr])
    case dict([(Expr, Expr)])
    case getattr(Expr, String)
    case getitem(Expr, Expr)
    case slice(Expr, start: Expr?, stop: Expr?, step: Expr?)
    case call(Expr, [Expr], [Keyword])
    case filter(Expr, name: String, [Expr], [Keyword])
    case test(Expr, name: String, [Expr], [Keyword], negated: Bool)
    case negate(Expr)
    case plus(Expr)
    case not(Expr)
    case binary(String, Expr, Expr)
    case and(Expr, Expr)
    case or(Expr, Expr)
    case compare(Expr, [(String, Expr)])
    case conditional(test: Expr, then: Expr, otherwise: Expr?)
}

extension ExprKind {
    var childDepth: Int {
        func m(_ es: [Expr]) -> Int { es.map(\.depth).max() ?? 0 }
        func o(_ e: Expr?) -> Int { e?.depth ?? 0 }
        switch self {
        case .literal, .name: return 0
        case let .list(items), let .tuple(items): return m(items)
        case let .dict(pairs): return pairs.map { max($0.0.depth, $0.1.depth) }.max() ?? 0
        case let .getattr(e, _), let .negate(e), let .plus(e), let .not(e): return e.depth
        case let .getitem(a, b), let .binary(_, a, b), let .and(a, b), let .or(a, b): return max(a.depth, b.depth)
        case let .slice(e, a, b, c): return max(e.depth, o(a), o(b), o(c))
        case let .call(e, args, kw), let .filter(e, _, args, kw), let .test(e, _, args, kw, _):
            return max(e.depth, m(args), m(kw.map(\.value)))
        case let .compare(e, ops): return max(e.depth, m(ops.map(\.1)))
        case let .conditional(a, b, c): return max(a.depth, b.depth, o(c))
        }
    }
}

indirect enum AssignTarget: Sendable {
    case name(String)
    case tuple([AssignTarget])
    case namespaceAttribute(String, String)
}

struct FilterCall: Sendable {
    var name: String
    var args: [Expr]
    var kwargs: [Keyword]
    var pos: SourcePos
}

struct ForLoop: Sendable {
    var target: AssignTarget
    var iterable: Expr
    var condition: Expr?
    var body: [Node]
    var elseBody: [Node]
    var pos: SourcePos
}

struct MacroParameter: Sendable {
    var name: String
    var defaultValue: Expr?
}

struct MacroDef: Sendable {
    var name: String
    var parameters: [MacroParameter]
    var body: [Node]
    var pos: SourcePos
}

indirect enum Node: Sendable {
    case text(String)
    case output(Expr)
    case ifBlock([(Expr, [Node])], elseBody: [Node])
    case forLoop(ForLoop)
    case set(AssignTarget, Expr, SourcePos)
    case setBlock(AssignTarget, [FilterCall], [Node], SourcePos)
    case macro(MacroDef)
    case filterBlock([FilterCall], [Node])
    case with([(AssignTarget, Expr)], [Node])
    case breakLoop(SourcePos)
    case continueLoop(SourcePos)
}

// MARK: - Parser

/// Recursive-descent parser following Jinja2's grammar (parser.py) for the supported subset.
struct JinjaParser {
    private let tokens: [Token]
    private var i = 0
    private var depth = 0
    private var blockDepth = 0
    private var loopDepth = 0
    private static let maxDepth = 100

    init(tokens: [Token]) { self.tokens = tokens }

    private var current: Token { tokens[i] }
    private var peek: Token { tokens[min(i + 1, tokens.count - 1)] }

    private mutating func advance() -> Token {
        let t = tokens[i]
        if i < tokens.count - 1 { i += 1 }
        return t
    }

    private func fail(_ what: String, _ t: Token? = nil) -> ChatTemplateError {
        templateError(what, at: (t ?? current).pos)
    }

    private func isName(_ n: String) -> Bool {
        if case let .name(x) = current.kind { return x == n }
        return false
    }

    private func isOp(_ o: String) -> Bool {
        if case let .op(x) = current.kind { return x == o }
        return false
    }

    private mutating func skipName(_ n: String) -> Bool {
        if isName(n) { _ = advance(); return true }
        return false
    }

    private mutating func skipOp(_ o: String) -> Bool {
        if isOp(o) { _ = advance(); return true }
        return false
    }

    private mutating func expectOp(_ o: String, _ context: String) throws {
        guard skipOp(o) else { throw fail("expected '\(o)' \(context), got \(current.kind.display)") }
    }

    private mutating func expectName(_ context: String) throws -> String {
        guard case let .name(n) = current.kind else {
            throw fail("expected a name \(context), got \(current.kind.display)")
        }
        _ = advance()
        return n
    }

    private mutating func expectBlockEnd(_ context: String) throws {
        guard current.kind == .blockEnd else {
            throw fail("expected '%}' to end \(context), got \(current.kind.display)")
        }
        _ = advance()
    }

    static let maxExprDepth = 128

    private func mk(kind: ExprKind, pos: SourcePos) throws -> Expr {
        let e = Expr(kind: kind, pos: pos)
        if e.depth > Self.maxExprDepth {
            throw templateError("expression is nested too deeply (more than \(Self.maxExprDepth) levels)", at: pos)
        }
        return e
    }

    private mutating func enter() throws {
        depth += 1
        if depth > Self.maxDepth { throw fail("expression is nested too deeply (more than \(Self.maxDepth) levels)") }
    }

    private mutating func leave() { depth -= 1 }

    // MARK: Statements

    mutating func parseTemplate() throws -> [Node] {
        let (body, _) = try subparse(endTags: [], opener: nil)
        return body
    }

    /// Parses nodes until `{% <one of endTags> ...`; leaves the stream at that tag's name.
    private mutating func subparse(endTags: Set<String>, opener: (String, SourcePos)?) throws -> ([Node], String?) {
        var body: [Node] = []
        while true {
            let t = current
            switch t.kind {
            case let .text(s):
                _ = advance()
                body.append(.text(s))
            case .variableBegin:
                _ = advance()
                let e = try parseTuple(withCondExpr: true)
                guard current.kind == .variableEnd else {
                    throw fail("expected '}}' to end the expression opened at \(t.pos), got \(current.kind.display)")
                }
                _ = advance()
                body.append(.output(e))
            case .blockBegin:
                _ = advance()
                if case let .name(n) = current.kind, endTags.contains(n) {
                    return (body, n)
                }
                body.append(try parseStatement(openedAt: t, enclosing: opener, endTags: endTags))
                try expectBlockEnd("the tag opened at \(t.pos)")
            case .eof:
                if let (tag, p) = opener {
                    let expected = endTags.sorted().map { "'\($0)'" }.joined(separator: " or ")
                    throw fail("unexpected end of template: the '\(tag)' block opened at \(p) is never closed (expected \(expected))")
                }
                return (body, nil)
            default:
                throw fail("unexpected \(t.kind.display)")
            }
        }
    }

    private static let endTagOwners: [String: String] = [
        "endif": "if", "elif": "if", "else": "if or for", "endfor": "for", "endset": "set", "endmacro": "macro",
        "endfilter": "filter", "endwith": "with", "endgeneration": "generation", "endraw": "raw",
        "endblock": "block", "endcall": "call",
    ]

    private mutating func parseStatement(openedAt open: Token, enclosing: (String, SourcePos)?,
                                         endTags: Set<String>) throws -> Node {
        let t = current
        guard case let .name(tag) = t.kind else {
            throw fail("expected a tag name after '{%', got \(t.kind.display)")
        }
        blockDepth += 1
        defer { blockDepth -= 1 }
        if blockDepth > Self.maxDepth { throw fail("blocks are nested too deeply (more than \(Self.maxDepth) levels)") }
        switch tag {
        case "if": return try parseIf()
        case "for": return try parseFor()
        case "set": return try parseSet()
        case "macro": return try parseMacro()
        case "filter": return try parseFilterBlock()
        case "with": return try parseWith()
        case "generation":
            _ = advance()
            try expectBlockEnd("'{% generation'")
            let (body, _) = try subparse(endTags: ["endgeneration"], opener: ("generation", t.pos))
            _ = advance()
            return .filterBlock([], body)
        case "break", "continue":
            _ = advance()
            guard loopDepth > 0 else { throw fail("'\(tag)' outside of a for loop", t) }
            return tag == "break" ? .breakLoop(t.pos) : .continueLoop(t.pos)
        default:
            if let owner = Self.endTagOwners[tag] {
                if let (encl, p) = enclosing {
                    let expected = endTags.sorted().map { "'\($0)'" }.joined(separator: " or ")
                    throw fail("unexpected '\(tag)': the innermost open block is '\(encl)' opened at \(p), which expects \(expected)", t)
                }
                throw fail("unexpected '\(tag)' with no open '\(owner)' block", t)
            }
            let known = ["include", "extends", "block", "import", "from", "call", "autoescape", "print", "do", "raw"]
            if known.contains(tag) { throw fail("unsupported tag '\(tag)'", t) }
            throw fail("unknown tag '\(tag)'", t)
        }
    }

    private mutating func parseIf() throws -> Node {
        let start = advance()  // if
        var branches: [(Expr, [Node])] = []
        var elseBody: [Node] = []
        var cond = try parseTuple(withCondExpr: false)
        while true {
            try expectBlockEnd("the 'if' condition")
            let (body, end) = try subparse(endTags: ["elif", "else", "endif"], opener: ("if", start.pos))
            branches.append((cond, body))
            _ = advance()  // elif / else / endif
            if end == "elif" {
                cond = try parseTuple(withCondExpr: false)
                continue
            }
            if end == "else" {
                try expectBlockEnd("'else'")
                (elseBody, _) = try subparse(endTags: ["endif"], opener: ("if", start.pos))
                _ = advance()
            }
            break
        }
        return .ifBlock(branches, elseBody: elseBody)
    }

    private mutating func parseFor() throws -> Node {
        let start = advance()  // for
        let target = try parseAssignTarget(extraEnd: ["in"], withNamespace: false)
        guard skipName("in") else { throw fail("expected 'in' in the for loop, got \(current.kind.display)") }
        let iterable = try parseTuple(withCondExpr: false, extraEnd: ["recursive"])
        var condition: Expr? = nil
        if skipName("if") { condition = try parseExpression() }
        if isName("recursive") { throw fail("recursive for loops are not supported") }
        try expectBlockEnd("the 'for' tag")
        loopDepth += 1
        let (body, end) = try subparse(endTags: ["endfor", "else"], opener: ("for", start.pos))
        loopDepth -= 1
        _ = advance()
        var elseBody: [Node] = []
        if end == "else" {
            try expectBlockEnd("'else'")
            (elseBody, _) = try subparse(endTags: ["endfor"], opener: ("for", start.pos))
            _ = advance()
        }
        return .forLoop(ForLoop(target: target, iterable: iterable, condition: condition, body: body,
                                elseBody: elseBody, pos: start.pos))
    }

    private mutating func parseSet() throws -> Node {
        let start = advance()  // set
        let target = try parseAssignTarget(extraEnd: [], withNamespace: true)
        if skipOp("=") {
            return .set(target, try parseTuple(withCondExpr: true), start.pos)
        }
        var filters: [FilterCall] = []
        while skipOp("|") { filters.append(try parseFilterCall()) }
        try expectBlockEnd("the 'set' tag")
        let (body, _) = try subparse(endTags: ["endset"], opener: ("set", start.pos))
        _ = advance()
        return .setBlock(target, filters, body, start.pos)
    }

    private mutating func parseMacro() throws -> Node {
        let start = advance()  // macro
        let name = try expectName("after 'macro'")
        try expectOp("(", "after the macro name")
        var params: [MacroParameter] = []
        while !isOp(")") {
            if !params.isEmpty { try expectOp(",", "between macro parameters") }
            if isOp(")") { break }
            let p = try expectName("for a macro parameter")
            var def: Expr? = nil
            if skipOp("=") { def = try parseExpression() }
            params.append(MacroParameter(name: p, defaultValue: def))
        }
        _ = advance()
        try expectBlockEnd("the 'macro' tag")
        let savedLoops = loopDepth
        loopDepth = 0
        let (body, _) = try subparse(endTags: ["endmacro"], opener: ("macro", start.pos))
        loopDepth = savedLoops
        _ = advance()
        return .macro(MacroDef(name: name, parameters: params, body: body, pos: start.pos))
    }

    private mutating func parseFilterBlock() throws -> Node {
        let start = advance()  // filter
        var filters = [try parseFilterCall()]
        while skipOp("|") { filters.append(try parseFilterCall()) }
        try expectBlockEnd("the 'filter' tag")
        let (body, _) = try subparse(endTags: ["endfilter"], opener: ("filter", start.pos))
        _ = advance()
        return .filterBlock(filters, body)
    }

    private mutating func parseWith() throws -> Node {
        let start = advance()  // with
        var assigns: [(AssignTarget, Expr)] = []
        while current.kind != .blockEnd {
            if !assigns.isEmpty { try expectOp(",", "between 'with' assignments") }
            let target = try parseAssignTarget(extraEnd: [], withNamespace: false)
            try expectOp("=", "in the 'with' assignment")
            assigns.append((target, try parseExpression()))
        }
        try expectBlockEnd("the 'with' tag")
        let (body, _) = try subparse(endTags: ["endwith"], opener: ("with", start.pos))
        _ = advance()
        return .with(assigns, body)
    }

    private mutating func parseAssignTarget(extraEnd: Set<String>, withNamespace: Bool) throws -> AssignTarget {
        if withNamespace, case let .name(ns) = current.kind, case .op(".") = peek.kind {
            _ = advance()
            _ = advance()
            let attr = try expectName("after '\(ns).'")
            return .namespaceAttribute(ns, attr)
        }
        let start = current
        let e = try parseTuple(simplified: true, withCondExpr: true, extraEnd: extraEnd)
        func convert(_ e: Expr) throws -> AssignTarget {
            switch e.kind {
            case let .name(n):
                if ["true", "false", "none", "True", "False", "None"].contains(n) { break }
                return .name(n)
            case let .tuple(items): return .tuple(try items.map(convert))
            default: break
            }
            throw templateError("cannot assign to this expression", at: e.pos)
        }
        if case .literal = e.kind { throw fail("cannot assign to a literal", start) }
        return try convert(e)
    }

    // MARK: Expressions

    private func isTupleEnd(_ extraEnd: Set<String>) -> Bool {
        switch current.kind {
        case .variableEnd, .blockEnd, .eof: return true
        case .op(")"): return true
        case let .name(n): return extraEnd.contains(n)
        default: return false
        }
    }

    private mutating func parseTuple(simplified: Bool = false, withCondExpr: Bool = true,
                                     extraEnd: Set<String> = [], explicitParentheses: Bool = false) throws -> Expr {
        try enter()
        defer { leave() }
        let start = current.pos
        var args: [Expr] = []
        var isTuple = false
        while true {
            if !args.isEmpty { try expectOp(",", "between tuple items") }
            if isTupleEnd(extraEnd) { break }
            if simplified {
                args.append(try parsePrimary())
            } else {
                args.append(try parseExpression(withCondExpr: withCondExpr))
            }
            if isOp(",") { isTuple = true } else { break }
        }
        if !isTuple {
            if let a = args.first { return a }
            if !explicitParentheses { throw fail("expected an expression, got \(current.kind.display)") }
        }
        return try mk(kind: .tuple(args), pos: start)
    }

    private mutating func parseExpression(withCondExpr: Bool = true) throws -> Expr {
        try enter()
        defer { leave() }
        return withCondExpr ? try parseCondExpr() : try parseOr()
    }

    private mutating func parseCondExpr() throws -> Expr {
        var e = try parseOr()
        while isName("if") {
            let p = advance().pos
            let test = try parseOr()
            var otherwise: Expr? = nil
            if skipName("else") {
                try enter()
                defer { leave() }
                otherwise = try parseCondExpr()
            }
            e = try mk(kind: .conditional(test: test, then: e, otherwise: otherwise), pos: p)
        }
        return e
    }

    private mutating func parseOr() throws -> Expr {
        var e = try parseAnd()
        while isName("or") {
            let p = advance().pos
            e = try mk(kind: .or(e, try parseAnd()), pos: p)
        }
        return e
    }

    private mutating func parseAnd() throws -> Expr {
        var e = try parseNot()
        while isName("and") {
            let p = advance().pos
            e = try mk(kind: .and(e, try parseNot()), pos: p)
        }
        return e
    }

    private mutating func parseNot() throws -> Expr {
        if isName("not") {
            let p = advance().pos
            try enter()
            defer { leave() }
            return try mk(kind: .not(try parseNot()), pos: p)
        }
        return try parseCompare()
    }

    private mutating func parseCompare() throws -> Expr {
        let e = try parseMath1()
        var ops: [(String, Expr)] = []
        while true {
            if case let .op(o) = current.kind, ["==", "!=", "<", "<=", ">", ">="].contains(o) {
                _ = advance()
                ops.append((o, try parseMath1()))
            } else if isName("in") {
                _ = advance()
                ops.append(("in", try parseMath1()))
            } else if isName("not"), case .name("in") = peek.kind {
                _ = advance()
                _ = advance()
                ops.append(("not in", try parseMath1()))
            } else {
                break
            }
        }
        return try ops.isEmpty ? e : mk(kind: .compare(e, ops), pos: e.pos)
    }

    private mutating func parseMath1() throws -> Expr {
        var e = try parseConcat()
        while case let .op(o) = current.kind, o == "+" || o == "-" {
            let p = advance().pos
            e = try mk(kind: .binary(o, e, try parseConcat()), pos: p)
        }
        return e
    }

    private mutating func parseConcat() throws -> Expr {
        var e = try parseMath2()
        while isOp("~") {
            let p = advance().pos
            e = try mk(kind: .binary("~", e, try parseMath2()), pos: p)
        }
        return e
    }

    private mutating func parseMath2() throws -> Expr {
        var e = try parsePow()
        while case let .op(o) = current.kind, ["*", "/", "//", "%"].contains(o) {
            let p = advance().pos
            e = try mk(kind: .binary(o, e, try parsePow()), pos: p)
        }
        return e
    }

    private mutating func parsePow() throws -> Expr {
        var e = try parseUnary()
        while isOp("**") {
            let p = advance().pos
            e = try mk(kind: .binary("**", e, try parseUnary()), pos: p)
        }
        return e
    }

    private mutating func parseUnary(withFilter: Bool = true) throws -> Expr {
        var e: Expr
        if isOp("-") || isOp("+") {
            let t = advance()
            try enter()
            defer { leave() }
            let operand = try parseUnary(withFilter: false)
            e = try mk(kind: t.kind == .op("-") ? .negate(operand) : .plus(operand), pos: t.pos)
        } else {
            e = try parsePrimary()
        }
        e = try parsePostfix(e)
        if withFilter { e = try parseFilterExpr(e) }
        return e
    }

    private mutating func parsePrimary() throws -> Expr {
        let t = current
        switch t.kind {
        case let .name(n):
            _ = advance()
            switch n {
            case "true", "True": return try mk(kind: .literal(.bool(true)), pos: t.pos)
            case "false", "False": return try mk(kind: .literal(.bool(false)), pos: t.pos)
            case "none", "None": return try mk(kind: .literal(.none), pos: t.pos)
            default: return try mk(kind: .name(n), pos: t.pos)
            }
        case let .string(s):
            _ = advance()
            var str = s
            while case let .string(more) = current.kind {
                str += more
                _ = advance()
            }
            return try mk(kind: .literal(.string(str)), pos: t.pos)
        case let .integer(v):
            _ = advance()
            return try mk(kind: .literal(.int(v)), pos: t.pos)
        case let .float(v):
            _ = advance()
            return try mk(kind: .literal(.double(v)), pos: t.pos)
        case .op("("):
            _ = advance()
            let e = try parseTuple(explicitParentheses: true)
            try expectOp(")", "to close the '(' at \(t.pos)")
            return e
        case .op("["):
            _ = advance()
            try enter()
            defer { leave() }
            var items: [Expr] = []
            while !isOp("]") {
                if !items.isEmpty { try expectOp(",", "between list items") }
                if isOp("]") { break }
                items.append(try parseExpression())
            }
            _ = advance()
            return try mk(kind: .list(items), pos: t.pos)
        case .op("{"):
            _ = advance()
            try enter()
            defer { leave() }
            var items: [(Expr, Expr)] = []
            while !isOp("}") {
                if !items.isEmpty { try expectOp(",", "between dict items") }
                if isOp("}") { break }
                let k = try parseExpression()
                try expectOp(":", "after a dict key")
                items.append((k, try parseExpression()))
            }
            _ = advance()
            return try mk(kind: .dict(items), pos: t.pos)
        default:
            throw fail("unexpected \(t.kind.display) where an expression was expected")
        }
    }

    private mutating func parsePostfix(_ node: Expr) throws -> Expr {
        var e = node
        while true {
            if isOp(".") || isOp("[") {
                e = try parseSubscript(e)
            } else if isOp("(") {
                e = try parseCall(e)
            } else {
                return e
            }
        }
    }

    private mutating func parseFilterExpr(_ node: Expr) throws -> Expr {
        var e = node
        while true {
            if isOp("|") {
                _ = advance()
                let f = try parseFilterCall()
                e = try mk(kind: .filter(e, name: f.name, f.args, f.kwargs), pos: f.pos)
            } else if isName("is") {
                e = try parseTest(e)
            } else if isOp("(") {
                e = try parseCall(e)
            } else {
                return e
            }
        }
    }

    private mutating func parseSubscript(_ node: Expr) throws -> Expr {
        let t = advance()
        if t.kind == .op(".") {
            let a = current
            switch a.kind {
            case let .name(n):
                _ = advance()
                return try mk(kind: .getattr(node, n), pos: a.pos)
            case let .integer(v):
                _ = advance()
                return try mk(kind: .getitem(node, mk(kind: .literal(.int(v)), pos: a.pos)), pos: a.pos)
            default:
                throw fail("expected an attribute name after '.', got \(a.kind.display)")
            }
        }
        // '['
        try enter()
        defer { leave() }
        var args: [Expr] = []
        while !isOp("]") {
            if !args.isEmpty { try expectOp(",", "between subscripts") }
            args.append(try parseSubscribed(node))
        }
        _ = advance()
        guard !args.isEmpty else { throw fail("empty subscript '[]'", t) }
        let key = try args.count == 1 ? args[0] : mk(kind: .tuple(args), pos: t.pos)
        if case .slice = key.kind { return key }
        return try mk(kind: .getitem(node, key), pos: t.pos)
    }

    /// One subscript: an expression or a slice `a:b:c` (returned as `.slice(node, ...)`).
    private mutating func parseSubscribed(_ node: Expr) throws -> Expr {
        let p = current.pos
        var start: Expr? = nil
        if !isOp(":") {
            let e = try parseExpression()
            if !isOp(":") { return e }
            start = e
        }
        _ = advance()  // ':'
        var stop: Expr? = nil
        var step: Expr? = nil
        if !isOp(":") && !isOp("]") && !isOp(",") { stop = try parseExpression() }
        if skipOp(":") {
            if !isOp("]") && !isOp(",") { step = try parseExpression() }
        }
        return try mk(kind: .slice(node, start: start, stop: stop, step: step), pos: p)
    }

    private mutating func parseCallArgs() throws -> ([Expr], [Keyword]) {
        let open = advance()  // '('
        try enter()
        defer { leave() }
        var args: [Expr] = []
        var kwargs: [Keyword] = []
        var first = true
        while !isOp(")") {
            if !first {
                try expectOp(",", "between call arguments")
                if isOp(")") { break }
            }
            first = false
            if isOp("*") || isOp("**") { throw fail("'*args' / '**kwargs' in calls are not supported") }
            if case let .name(n) = current.kind, case .op("=") = peek.kind {
                _ = advance()
                _ = advance()
                kwargs.append(Keyword(name: n, value: try parseExpression()))
            } else {
                if !kwargs.isEmpty { throw fail("positional argument follows keyword argument") }
                args.append(try parseExpression())
            }
        }
        guard isOp(")") else { throw fail("expected ')' to close the call opened at \(open.pos)") }
        _ = advance()
        return (args, kwargs)
    }

    private mutating func parseCall(_ node: Expr) throws -> Expr {
        let p = current.pos
        let (args, kwargs) = try parseCallArgs()
        return try mk(kind: .call(node, args, kwargs), pos: p)
    }

    private mutating func parseDottedName(_ what: String) throws -> String {
        var name = try expectName("for the \(what) name")
        while isOp("."), case .name = peek.kind {
            _ = advance()
            name += "." + (try expectName("for the \(what) name"))
        }
        return name
    }

    private mutating func parseFilterCall() throws -> FilterCall {
        let p = current.pos
        let name = try parseDottedName("filter")
        var args: [Expr] = []
        var kwargs: [Keyword] = []
        if isOp("(") { (args, kwargs) = try parseCallArgs() }
        return FilterCall(name: name, args: args, kwargs: kwargs, pos: p)
    }

    private mutating func parseTest(_ node: Expr) throws -> Expr {
        _ = advance()  // is
        let negated = skipName("not")
        let p = current.pos
        let name = try parseDottedName("test")
        var args: [Expr] = []
        var kwargs: [Keyword] = []
        if isOp("(") {
            (args, kwargs) = try parseCallArgs()
        } else {
            var takesArg = false
            switch current.kind {
            case let .name(n): takesArg = !["else", "or", "and"].contains(n)
            case .string, .integer, .float, .op("("), .op("["), .op("{"): takesArg = true
            default: break
            }
            if takesArg {
                if isName("is") { throw fail("cannot chain multiple tests with 'is'") }
                args = [try parsePostfix(try parsePrimary())]
            }
        }
        return try mk(kind: .test(node, name: name, args, kwargs, negated: negated), pos: p)
    }
}
