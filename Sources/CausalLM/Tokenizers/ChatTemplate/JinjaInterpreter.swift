import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A variable scope: the template's top level, one for-loop iteration, a macro call or a `with` block.
final class Scope {
    var vars: [String: Value] = [:]
    let parent: Scope?
    init(parent: Scope?) { self.parent = parent }

    func lookup(_ name: String) -> Value? {
        var s: Scope? = self
        while let c = s {
            if let v = c.vars[name] { return v }
            s = c.parent
        }
        return nil
    }
}

private enum Flow { case normal, breakLoop, continueLoop }

/// Walks the syntax tree for one `render` call. Not shared between threads.
final class JinjaInterpreter {
    static let maxOutputBytes = 16 << 20
    static let maxIterations = 1_000_000
    static let maxSequence = 1_000_000
    static let maxRange = 100_000  // as Jinja's sandbox (MAX_RANGE)
    static let maxMacroDepth = 40
    static let maxRecursion = 1000

    private var out = ""
    private var outBytes = 0
    private var iterations = 0
    private var macroDepth = 0
    private var recursion = 0
    private let work = Work()
    private var lastPos = SourcePos(line: 1, column: 1)
    private var macros: [Macro] = []
    private var globals: [String: Value] = [:]

    init(now: Date? = nil) {
        globals["range"] = .function(Function("range", Self.range))
        globals["namespace"] = .function(Function("namespace") { [unowned self] args, pos in
            let d = try Self.dictFromArgs(args, "namespace", pos)
            for x in d.values { try self.checkStorable(x, in: nil, pos) }
            return .namespace(Self.makeNamespace(d))
        })
        globals["dict"] = .function(Function("dict") { args, pos in .dict(try Self.dictFromArgs(args, "dict", pos)) })
        globals["raise_exception"] = .function(Function("raise_exception") { args, pos in
            let msg = args.positional.first.map(pyDisplayStr) ?? args.keyword.first.map { pyDisplayStr($0.1) } ?? ""
            throw ChatTemplateError("chat template: raise_exception at \(pos): \(msg)")
        })
        globals["strftime_now"] = .function(Function("strftime_now") { args, pos in
            let a = try bind(args, "strftime_now", [("format", nil)], pos)
            guard case let .string(fmt) = a[0] else {
                throw templateError("strftime_now: the format must be a string", at: pos)
            }
            return .string(Self.formatTime(fmt, at: now))
        })
    }

    func render(_ body: [Node], scope: Scope) throws -> String {
        defer {
            for m in macros { m.scope = nil }  // break scope <-> macro reference cycles
            macros.removeAll()
        }
        do {
            _ = try exec(body, scope)
        } catch Work.Exhausted.steps {
            throw templateError("the template does too much work (over \(Work.limit) steps: runaway growth?)", at: lastPos)
        } catch Work.Exhausted.tooLong {
            throw templateError("a value is longer than \(Work.maxStringBytes >> 20) MiB when printed", at: lastPos)
        }
        return out
    }

    // MARK: Statements

    private func emit(_ s: String, _ pos: SourcePos?) throws {
        outBytes += s.utf8.count
        if outBytes > Self.maxOutputBytes {
            throw templateError("output exceeds the \(Self.maxOutputBytes >> 20) MiB limit", at: pos)
        }
        out += s
    }

    private func capture(_ body: () throws -> Flow) throws -> (String, Flow) {
        let saved = out
        out = ""
        let flow = try body()
        let text = out
        out = saved
        return (text, flow)
    }

    private func descend(_ pos: SourcePos?) throws {
        recursion += 1
        if recursion > Self.maxRecursion {
            throw templateError("evaluation nested more than \(Self.maxRecursion) levels deep", at: pos)
        }
    }

    private func exec(_ nodes: [Node], _ scope: Scope) throws -> Flow {
        try descend(nil)
        defer { recursion -= 1 }
        for node in nodes {
            switch node {
            case let .text(s):
                try emit(s, nil)
            case let .output(e):
                try emit(try pyStr(try eval(e, scope), work), e.pos)
            case let .ifBlock(branches, elseBody):
                var taken = false
                for (cond, body) in branches where try eval(cond, scope).truthy {
                    taken = true
                    let f = try exec(body, scope)
                    if f != .normal { return f }
                    break
                }
                if !taken {
                    let f = try exec(elseBody, scope)
                    if f != .normal { return f }
                }
            case let .forLoop(loop):
                let f = try execFor(loop, scope)
                if f != .normal { return f }
            case let .set(target, e, pos):
                try assign(target, try eval(e, scope), scope, pos)
            case let .setBlock(target, filters, body, pos):
                let (text, f) = try capture { try exec(body, scope) }
                var v = Value.string(text)
                for fc in filters { v = try applyFilter(fc, v, scope) }
                try assign(target, v, scope, pos)
                if f != .normal { return f }
            case let .macro(def):
                let m = Macro(def: def, scope: scope)
                macros.append(m)
                scope.vars[def.name] = .macro(m)
            case let .filterBlock(filters, body):
                let (text, f) = try capture { try exec(body, scope) }
                var v = Value.string(text)
                for fc in filters { v = try applyFilter(fc, v, scope) }
                try emit(try pyStr(v, work), filters.first?.pos)
                if f != .normal { return f }
            case let .with(assigns, body):
                let inner = Scope(parent: scope)
                for (target, e) in assigns { try assign(target, try eval(e, scope), inner, e.pos) }
                let f = try exec(body, inner)
                if f != .normal { return f }
            case .breakLoop:
                return .breakLoop
            case .continueLoop:
                return .continueLoop
            }
        }
        return .normal
    }

    private func execFor(_ l: ForLoop, _ scope: Scope) throws -> Flow {
        var items = try iterate(try eval(l.iterable, scope), l.iterable.pos)
        if let cond = l.condition {
            var kept: [Value] = []
            for item in items {
                try countIteration(l.pos)
                let s = Scope(parent: scope)
                try assign(l.target, item, s, l.pos)
                if try eval(cond, s).truthy { kept.append(item) }
            }
            items = kept
        }
        let n = items.count
        for (idx, item) in items.enumerated() {
            try countIteration(l.pos)
            let s = Scope(parent: scope)
            s.vars["loop"] = .loop(LoopState(index: idx, items: items))
            try assign(l.target, item, s, l.pos)
            if try exec(l.body, s) == .breakLoop { break }
        }
        if n == 0 { return try exec(l.elseBody, Scope(parent: scope)) }
        return .normal
    }

    private func countIteration(_ pos: SourcePos) throws {
        iterations += 1
        if iterations > Self.maxIterations {
            throw templateError("more than \(Self.maxIterations) loop iterations in one render", at: pos)
        }
    }

    private static func loopAttribute(_ l: LoopState, _ name: String) -> Value {
        let i = l.index, n = l.items.count
        switch name {
        case "index": return .int(i + 1)
        case "index0": return .int(i)
        case "revindex": return .int(n - i)
        case "revindex0": return .int(n - i - 1)
        case "first": return .bool(i == 0)
        case "last": return .bool(i == n - 1)
        case "length": return .int(n)
        case "depth": return .int(1)
        case "depth0": return .int(0)
        case "previtem": return i > 0 ? l.items[i - 1] : .undefined("there is no previous item")
        case "nextitem": return i + 1 < n ? l.items[i + 1] : .undefined("there is no next item")
        case "cycle":
            return .function(Function("loop.cycle") { args, pos in
                guard !args.positional.isEmpty else { throw templateError("loop.cycle: no items given", at: pos) }
                return args.positional[i % args.positional.count]
            })
        default: return .undefined("'LoopContext' object has no attribute '\(name)'")
        }
    }

    /// Values kept in a namespace outlive their loop iteration, so this is where a template could build
    /// ever deeper structures (or a namespace containing itself). Keep them shallow and acyclic.
    static let maxStoredDepth = 64

    private func checkStorable(_ v: Value, in target: Namespace?, _ pos: SourcePos) throws {
        func walk(_ v: Value, _ depth: Int) throws {
            switch v {
            case .undefined, .none, .bool, .int, .double, .string:
                return
            default:
                break
            }
            try work.spend(1)
            if depth > Self.maxStoredDepth {
                throw templateError("value stored in a namespace is nested more than \(Self.maxStoredDepth) levels deep", at: pos)
            }
            switch v {
            case let .list(a), let .tuple(a):
                try work.spend(a.count >> 3)
                for x in a { try walk(x, depth + 1) }
            case let .dict(d):
                for x in d.values { try walk(x, depth + 1) }
            case let .namespace(ns):
                if ns === target { throw templateError("cannot store a namespace inside itself", at: pos) }
                for x in ns.attributes.values { try walk(x, depth + 1) }
            case let .loop(l):
                for x in l.items { try walk(x, depth + 1) }
            case let .function(f):
                if f.capturesValues { throw templateError("cannot store the bound method '\(f.name)' in a namespace", at: pos) }
            case let .macro(m):
                throw templateError("cannot store macro '\(m.def.name)' in a namespace", at: pos)
            default:
                break
            }
        }
        try walk(v, 0)
    }

    private func assign(_ t: AssignTarget, _ v: Value, _ scope: Scope, _ pos: SourcePos) throws {
        switch t {
        case let .name(n):
            scope.vars[n] = v
        case let .tuple(targets):
            let items = try iterate(v, pos)
            guard items.count == targets.count else {
                throw templateError("cannot unpack \(items.count) values into \(targets.count) names", at: pos)
            }
            for (tt, item) in zip(targets, items) { try assign(tt, item, scope, pos) }
        case let .namespaceAttribute(ns, attr):
            guard case let .namespace(obj)? = scope.lookup(ns) else {
                throw templateError("cannot set '\(ns).\(attr)': '\(ns)' is not a namespace() object", at: pos)
            }
            try checkStorable(v, in: obj, pos)
            obj.attributes[attr] = v
        }
    }

    // MARK: Expressions

    private func eval(_ e: Expr, _ scope: Scope) throws -> Value {
        lastPos = e.pos
        try descend(e.pos)
        defer { recursion -= 1 }
        switch e.kind {
        case let .literal(l):
            switch l {
            case .none: return .none
            case let .bool(b): return .bool(b)
            case let .int(i): return .int(i)
            case let .double(d): return .double(d)
            case let .string(s): return .string(s)
            }
        case let .name(n):
            return scope.lookup(n) ?? globals[n] ?? .undefined("'\(n)' is undefined")
        case let .list(items):
            return .list(try items.map { try eval($0, scope) })
        case let .tuple(items):
            return .tuple(try items.map { try eval($0, scope) })
        case let .dict(pairs):
            var d = PyDict()
            for (k, v) in pairs {
                let key = try eval(k, scope)
                guard case let .string(ks) = key else {
                    throw templateError("dict keys must be strings, got \(key.typeName)", at: k.pos)
                }
                d[ks] = try eval(v, scope)
            }
            return .dict(d)
        case let .getattr(obj, name):
            return try getattr(try eval(obj, scope), name, e.pos)
        case let .getitem(obj, key):
            return try getitem(try eval(obj, scope), try eval(key, scope), e.pos)
        case let .slice(obj, start, stop, step):
            let o = try eval(obj, scope)
            func bound(_ x: Expr?) throws -> Int? {
                guard let x = x else { return nil }
                let v = try eval(x, scope)
                if case .none = v { return nil }
                guard let i = v.intValue else {
                    throw templateError("slice indices must be integers or none, got \(v.typeName)", at: x.pos)
                }
                return i
            }
            return try slice(o, try bound(start), try bound(stop), try bound(step), e.pos)
        case let .call(callee, args, kwargs):
            let f = try eval(callee, scope)
            return try call(f, try evalArgs(args, kwargs, scope), e.pos)
        case let .filter(v, name, args, kwargs):
            let val = try eval(v, scope)
            return try applyFilter(FilterCall(name: name, args: args, kwargs: kwargs, pos: e.pos), val, scope)
        case let .test(v, name, args, kwargs, negated):
            let val = try eval(v, scope)
            let r = try applyTest(name, val, try evalArgs(args, kwargs, scope), e.pos)
            return .bool(r != negated)
        case let .negate(x):
            let v = try eval(x, scope)
            if case let .double(d) = v { return .double(-d) }
            if let i = v.intValue {
                guard i != Int.min else { throw templateError("integer overflow", at: e.pos) }
                return .int(-i)
            }
            try failIfUndefined(v, e.pos)
            throw templateError("bad operand type for unary -: '\(v.typeName)'", at: e.pos)
        case let .plus(x):
            let v = try eval(x, scope)
            if case .double = v { return v }
            if let i = v.intValue { return .int(i) }
            try failIfUndefined(v, e.pos)
            throw templateError("bad operand type for unary +: '\(v.typeName)'", at: e.pos)
        case let .not(x):
            return .bool(!(try eval(x, scope).truthy))
        case let .binary(op, a, b):
            return try binary(op, try eval(a, scope), try eval(b, scope), e.pos)
        case let .and(a, b):
            let l = try eval(a, scope)
            return l.truthy ? try eval(b, scope) : l
        case let .or(a, b):
            let l = try eval(a, scope)
            return l.truthy ? l : try eval(b, scope)
        case let .compare(first, ops):
            var left = try eval(first, scope)
            for (op, rhs) in ops {
                let right = try eval(rhs, scope)
                if !(try compare(op, left, right, rhs.pos)) { return .bool(false) }
                left = right
            }
            return .bool(true)
        case let .conditional(test, then, otherwise):
            if try eval(test, scope).truthy { return try eval(then, scope) }
            if let o = otherwise { return try eval(o, scope) }
            return .undefined("the inline 'if' expression at \(e.pos) has no 'else' and its condition was false")
        }
    }

    private func evalArgs(_ args: [Expr], _ kwargs: [Keyword], _ scope: Scope) throws -> CallArgs {
        CallArgs(positional: try args.map { try eval($0, scope) },
                 keyword: try kwargs.map { ($0.name, try eval($0.value, scope)) })
    }

    private func failIfUndefined(_ v: Value, _ pos: SourcePos) throws {
        if case let .undefined(why) = v { throw templateError(why, at: pos) }
    }

    private func call(_ f: Value, _ args: CallArgs, _ pos: SourcePos) throws -> Value {
        switch f {
        case let .function(fn): return try fn.body(args, pos)
        case let .macro(m): return try callMacro(m, args, pos)
        case let .undefined(why): throw templateError("\(why) (called as a function)", at: pos)
        default: throw templateError("'\(f.typeName)' object is not callable", at: pos)
        }
    }

    private func callMacro(_ m: Macro, _ args: CallArgs, _ pos: SourcePos) throws -> Value {
        guard let defScope = m.scope else { throw templateError("macro '\(m.def.name)' is no longer callable", at: pos) }
        macroDepth += 1
        defer { macroDepth -= 1 }
        if macroDepth > Self.maxMacroDepth {
            throw templateError("macro calls nested more than \(Self.maxMacroDepth) deep (runaway recursion in '\(m.def.name)'?)", at: pos)
        }
        let s = Scope(parent: defScope)
        let params = m.def.parameters
        var bound = Set<String>()
        var varargs: [Value] = []
        for (i, v) in args.positional.enumerated() {
            if i < params.count {
                s.vars[params[i].name] = v
                bound.insert(params[i].name)
            } else {
                varargs.append(v)
            }
        }
        var kwargs = PyDict()
        for (k, v) in args.keyword {
            if params.contains(where: { $0.name == k }) {
                if bound.contains(k) {
                    throw templateError("macro '\(m.def.name)' got multiple values for argument '\(k)'", at: pos)
                }
                s.vars[k] = v
                bound.insert(k)
            } else {
                kwargs[k] = v
            }
        }
        for p in params where !bound.contains(p.name) {
            if let d = p.defaultValue {
                s.vars[p.name] = try eval(d, s)
            } else {
                s.vars[p.name] = .undefined("parameter '\(p.name)' was not provided to macro '\(m.def.name)'")
            }
        }
        s.vars["varargs"] = .tuple(varargs)
        s.vars["kwargs"] = .dict(kwargs)
        let (text, _) = try capture { try exec(m.def.body, s) }
        return .string(text)
    }

    // MARK: Attribute and item access

    private func getattr(_ o: Value, _ name: String, _ pos: SourcePos) throws -> Value {
        switch o {
        case let .undefined(why):
            throw templateError("\(why) (while reading attribute '\(name)')", at: pos)
        case let .dict(d):
            if let m = Self.dictMethod(d, name) { return m }
            return d[name] ?? .undefined("'dict object' has no attribute '\(name)'")
        case let .namespace(ns):
            return ns.attributes[name] ?? .undefined("'Namespace' object has no attribute '\(name)'")
        case let .string(s):
            return Self.stringMethod(s, name, work) ?? .undefined("'str object' has no attribute '\(name)'")
        case let .loop(l):
            return Self.loopAttribute(l, name)
        case let .list(a), let .tuple(a):
            return Self.listMethod(a, o.typeName, name, work) ?? .undefined("'\(o.typeName) object' has no attribute '\(name)'")
        default:
            return .undefined("'\(o.typeName) object' has no attribute '\(name)'")
        }
    }

    private func getitem(_ o: Value, _ key: Value, _ pos: SourcePos) throws -> Value {
        switch o {
        case let .undefined(why):
            throw templateError("\(why) (while reading item [\(pyDisplay(key))])", at: pos)
        case let .dict(d):
            if case let .string(k) = key {
                if let v = d[k] { return v }
                if let m = Self.dictMethod(d, k) { return m }
            }
            return .undefined("'dict object' has no attribute \(pyDisplay(key))")
        case let .namespace(ns):
            if case let .string(k) = key, let v = ns.attributes[k] { return v }
            return .undefined("'Namespace' object has no attribute \(pyDisplay(key))")
        case let .list(a), let .tuple(a):
            if let i = key.intValue {
                let j = i < 0 ? i + a.count : i
                return (j >= 0 && j < a.count) ? a[j] : .undefined("\(o.typeName) index \(i) out of range")
            }
            if case let .string(k) = key { return try getattr(o, k, pos) }
            return .undefined("\(o.typeName) indices must be integers, not \(key.typeName)")
        case let .string(s):
            if let i = key.intValue {
                let u = Array(s.unicodeScalars)
                let j = i < 0 ? i + u.count : i
                return (j >= 0 && j < u.count) ? .string(String(u[j])) : .undefined("string index \(i) out of range")
            }
            if case let .string(k) = key { return try getattr(o, k, pos) }
            return .undefined("string indices must be integers, not \(key.typeName)")
        default:
            return .undefined("'\(o.typeName)' object is not subscriptable")
        }
    }

    private func slice(_ o: Value, _ start: Int?, _ stop: Int?, _ step: Int?, _ pos: SourcePos) throws -> Value {
        let st = step ?? 1
        guard st != 0 else { throw templateError("slice step cannot be zero", at: pos) }
        func indices(_ n: Int) -> [Int] {
            var r: [Int] = []
            if st > 0 {
                var lo = start ?? 0, hi = stop ?? n
                if lo < 0 { lo = max(0, lo + n) } else { lo = min(lo, n) }
                if hi < 0 { hi = max(0, hi + n) } else { hi = min(hi, n) }
                var i = lo
                while i < hi { r.append(i); i += st }
            } else {
                var lo = start ?? (n - 1), hi = stop ?? -1
                if start != nil { if lo < 0 { lo = max(-1, lo + n) } else { lo = min(lo, n - 1) } }
                if stop != nil { if hi < 0 { hi = max(-1, hi + n) } else { hi = min(hi, n - 1) } }
                var i = lo
                while i > hi { r.append(i); i += st }
            }
            return r
        }
        switch o {
        case let .list(a): return .list(indices(a.count).map { a[$0] })
        case let .tuple(a): return .tuple(indices(a.count).map { a[$0] })
        case let .string(s):
            let u = Array(s.unicodeScalars)
            return .string(makeString(indices(u.count).map { u[$0] }))
        case let .undefined(why): throw templateError("\(why) (while slicing)", at: pos)
        default: throw templateError("'\(o.typeName)' object cannot be sliced", at: pos)
        }
    }

    /// Python iteration: list/tuple items, string characters, dict keys; undefined iterates as empty.
    private func iterate(_ v: Value, _ pos: SourcePos) throws -> [Value] {
        switch v {
        case let .list(a), let .tuple(a): return a
        case let .string(s): return s.unicodeScalars.map { .string(String($0)) }
        case let .dict(d): return d.keys.map { .string($0) }
        case .undefined: return []
        default: throw templateError("'\(v.typeName)' object is not iterable", at: pos)
        }
    }

    // MARK: Operators

    private func checkedString(_ s: String, _ pos: SourcePos) throws -> Value {
        try work.spend(s.utf8.count >> 6 + 1)
        if s.utf8.count > Self.maxOutputBytes {
            throw templateError("string longer than \(Self.maxOutputBytes >> 20) MiB", at: pos)
        }
        return .string(s)
    }

    private func binary(_ op: String, _ a: Value, _ b: Value, _ pos: SourcePos) throws -> Value {
        if op == "~" { return try checkedString(try pyStr(a, work) + pyStr(b, work), pos) }
        try failIfUndefined(a, pos)
        try failIfUndefined(b, pos)
        func overflow() -> ChatTemplateError { templateError("integer overflow in '\(op)'", at: pos) }
        func unsupported() -> ChatTemplateError {
            templateError("unsupported operand types for \(op): '\(a.typeName)' and '\(b.typeName)'", at: pos)
        }
        let ints: (Int, Int)? = {
            if let x = a.intValue, let y = b.intValue { return (x, y) }
            return nil
        }()
        let nums: (Double, Double)? = {
            if let x = a.numberValue, let y = b.numberValue { return (x, y) }
            return nil
        }()
        switch op {
        case "+":
            if let (x, y) = ints {
                let (r, o) = x.addingReportingOverflow(y)
                if o { throw overflow() }
                return .int(r)
            }
            if let (x, y) = nums { return .double(x + y) }
            switch (a, b) {
            case let (.string(x), .string(y)): return try checkedString(x + y, pos)
            case let (.list(x), .list(y)): return try checkedSequence(.list(x + y), x.count + y.count, pos)
            case let (.tuple(x), .tuple(y)): return try checkedSequence(.tuple(x + y), x.count + y.count, pos)
            default: throw unsupported()
            }
        case "-":
            if let (x, y) = ints {
                let (r, o) = x.subtractingReportingOverflow(y)
                if o { throw overflow() }
                return .int(r)
            }
            if let (x, y) = nums { return .double(x - y) }
            throw unsupported()
        case "*":
            if let (x, y) = ints {
                let (r, o) = x.multipliedReportingOverflow(by: y)
                if o { throw overflow() }
                return .int(r)
            }
            if let (x, y) = nums { return .double(x * y) }
            switch (a, b) {
            case let (.string(s), n) where n.intValue != nil, let (n, .string(s)) where n.intValue != nil:
                let k = max(0, n.intValue!)
                if k > 0 && s.utf8.count > Self.maxOutputBytes / k {
                    throw templateError("string repetition longer than \(Self.maxOutputBytes >> 20) MiB", at: pos)
                }
                return try checkedString(String(repeating: s, count: k), pos)
            case let (.list(x), n) where n.intValue != nil, let (n, .list(x)) where n.intValue != nil:
                let k = max(0, n.intValue!)
                if k > 0 && x.count > Self.maxSequence / k { throw templateError("list repetition too long", at: pos) }
                return try checkedSequence(.list(Array([[Value]](repeating: x, count: k).joined())), x.count * k, pos)
            default: throw unsupported()
            }
        case "/":
            guard let (x, y) = nums else { throw unsupported() }
            guard y != 0 else { throw templateError("division by zero", at: pos) }
            return .double(x / y)
        case "//":
            if let (x, y) = ints {
                guard y != 0 else { throw templateError("integer division by zero", at: pos) }
                if x == Int.min && y == -1 { throw overflow() }
                var q = x / y
                if (x % y != 0) && ((x < 0) != (y < 0)) { q -= 1 }
                return .int(q)
            }
            guard let (x, y) = nums else { throw unsupported() }
            guard y != 0 else { throw templateError("float floor division by zero", at: pos) }
            return .double((x / y).rounded(.down))
        case "%":
            if let (x, y) = ints {
                guard y != 0 else { throw templateError("integer modulo by zero", at: pos) }
                if y == -1 { return .int(0) }
                var r = x % y
                if r != 0 && ((r < 0) != (y < 0)) { r += y }
                return .int(r)
            }
            if let (x, y) = nums {
                guard y != 0 else { throw templateError("float modulo by zero", at: pos) }
                var r = fmod(x, y)
                if r != 0 && ((r < 0) != (y < 0)) { r += y }
                return .double(r)
            }
            if case .string = a { throw templateError("'%' string formatting is not supported", at: pos) }
            throw unsupported()
        case "**":
            if let (x, y) = ints, y >= 0 {
                var result = 1, base = x, e = y
                while e > 0 {
                    if e & 1 == 1 {
                        let (r, o) = result.multipliedReportingOverflow(by: base)
                        if o { throw overflow() }
                        result = r
                    }
                    e >>= 1
                    if e > 0 {
                        let (r, o) = base.multipliedReportingOverflow(by: base)
                        if o { throw overflow() }
                        base = r
                    }
                }
                return .int(result)
            }
            if let (x, y) = nums { return .double(pow(x, y)) }
            throw unsupported()
        default:
            throw templateError("unknown operator '\(op)'", at: pos)
        }
    }

    private func checkedSequence(_ v: Value, _ count: Int, _ pos: SourcePos) throws -> Value {
        try work.spend(count)
        if count > Self.maxSequence { throw templateError("list longer than \(Self.maxSequence) items", at: pos) }
        return v
    }

    private func contains(_ container: Value, _ item: Value, _ pos: SourcePos) throws -> Bool {
        switch container {
        case let .string(s):
            guard case let .string(needle) = item else {
                try failIfUndefined(item, pos)
                throw templateError("'in <string>' requires a string as left operand, not \(item.typeName)", at: pos)
            }
            return pyContains(s, needle)
        case let .list(a), let .tuple(a):
            return try a.contains { try pyEqual($0, item, work) }
        case let .dict(d):
            if case let .string(k) = item { return d[k] != nil }
            return false
        case .undefined:
            return false
        default:
            throw templateError("argument of type '\(container.typeName)' is not iterable", at: pos)
        }
    }

    private func compare(_ op: String, _ a: Value, _ b: Value, _ pos: SourcePos) throws -> Bool {
        switch op {
        case "==": return try pyEqual(a, b, work)
        case "!=": return !(try pyEqual(a, b, work))
        case "in": return try contains(b, a, pos)
        case "not in": return !(try contains(b, a, pos))
        default:
            try failIfUndefined(a, pos)
            try failIfUndefined(b, pos)
            let r: Bool?
            switch op {
            case "<": r = try pyLess(a, b, work)
            case ">": r = try pyLess(b, a, work)
            case "<=": r = try pyLess(b, a, work).map { !$0 }
            case ">=": r = try pyLess(a, b, work).map { !$0 }
            default: throw templateError("unknown comparison '\(op)'", at: pos)
            }
            guard let res = r else {
                throw templateError("'\(op)' not supported between instances of '\(a.typeName)' and '\(b.typeName)'", at: pos)
            }
            if (op == "<=" || op == ">="), a.numberValue?.isNaN == true || b.numberValue?.isNaN == true { return false }
            return res
        }
    }

    // MARK: Filters

    private static let unsupportedFilters: Set<String> = [
        "batch", "center", "filesizeformat", "format", "groupby", "pprint", "random", "slice", "striptags",
        "truncate", "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr",
    ]

    private func applyFilter(_ f: FilterCall, _ v: Value, _ scope: Scope) throws -> Value {
        let args = try evalArgs(f.args, f.kwargs, scope)
        return try filter(f.name, v, args, f.pos)
    }

    private func filter(_ name: String, _ v: Value, _ args: CallArgs, _ pos: SourcePos) throws -> Value {
        func b(_ params: [(String, Value?)]) throws -> [Value] { try bind(args, "filter '\(name)'", params, pos) }
        func str(_ x: Value) throws -> String {
            let r = try pyStr(x, work)
            try work.spend(r.utf8.count >> 4)
            return r
        }
        func optString(_ x: Value, _ what: String) throws -> String? {
            switch x {
            case .none, .undefined: return nil
            case let .string(s): return s
            default: throw templateError("filter '\(name)': \(what) must be a string", at: pos)
            }
        }
        switch name {
        case "trim":
            let a = try b([("chars", Value.none)])
            return .string(pyStrip(try str(v), chars: try optString(a[0], "chars"), left: true, right: true))
        case "length", "count":
            _ = try b([])
            return .int(try length(v, pos))
        case "upper":
            _ = try b([])
            return .string(try str(v).uppercased())
        case "lower":
            _ = try b([])
            return .string(try str(v).lowercased())
        case "capitalize":
            _ = try b([])
            return .string(pyCapitalize(try str(v)))
        case "title":
            _ = try b([])
            return .string(jinjaTitle(try str(v)))
        case "default", "d":
            let a = try b([("default_value", .string("")), ("boolean", .bool(false))])
            if v.isUndefined || (a[1].truthy && !v.truthy) { return a[0] }
            return v
        case "tojson":
            let a = try b([("ensure_ascii", .bool(false)), ("indent", Value.none), ("separators", Value.none),
                           ("sort_keys", .bool(false))])
            var opts = JSONOptions()
            opts.ensureASCII = a[0].truthy
            switch a[1] {
            case .none: break
            case let .string(s): opts.indent = s
            default:
                guard let n = a[1].intValue else { throw templateError("tojson: indent must be an integer or a string", at: pos) }
                opts.indent = String(repeating: " ", count: max(0, min(n, 64)))
                opts.itemSeparator = ","
            }
            switch a[2] {
            case .none: break
            case let .list(p), let .tuple(p):
                guard p.count == 2, case let .string(item) = p[0], case let .string(key) = p[1] else {
                    throw templateError("tojson: separators must be two strings", at: pos)
                }
                opts.itemSeparator = item
                opts.keySeparator = key
            default: throw templateError("tojson: separators must be two strings", at: pos)
            }
            opts.sortKeys = a[3].truthy
            var json = ""
            try pyJSON(v, opts, into: &json, work, pos: pos)
            return .string(json)
        case "string":
            _ = try b([])
            return .string(try str(v))
        case "join":
            let a = try b([("d", .string("")), ("attribute", Value.none)])
            var items = try iterate(v, pos)
            if case .none = a[1] {} else { items = try items.map { try attribute($0, a[1], pos) } }
            return try checkedString(items.map { try str($0) }.joined(separator: try str(a[0])), pos)
        case "first":
            _ = try b([])
            return try iterate(v, pos).first ?? .undefined("no first item, the sequence was empty")
        case "last":
            _ = try b([])
            return try iterate(v, pos).last ?? .undefined("no last item, the sequence was empty")
        case "list":
            _ = try b([])
            return .list(try iterate(v, pos))
        case "replace":
            let a = try b([("old", nil), ("new", nil), ("count", Value.none)])
            let count = a[2].intValue ?? -1
            guard let r = pyReplace(try str(v), try str(a[0]), try str(a[1]), count: count, maxBytes: Self.maxOutputBytes) else {
                throw templateError("filter 'replace': result longer than \(Self.maxOutputBytes >> 20) MiB", at: pos)
            }
            return try checkedString(r, pos)
        case "int":
            let a = try b([("default", .int(0)), ("base", .int(10))])
            return Self.toInt(v, base: a[1].intValue ?? 10) ?? a[0]
        case "float":
            let a = try b([("default", .double(0))])
            return Self.toFloat(v) ?? a[0]
        case "abs":
            _ = try b([])
            if case let .double(d) = v { return .double(abs(d)) }
            if let i = v.intValue, i != Int.min { return .int(abs(i)) }
            throw templateError("bad operand type for abs(): '\(v.typeName)'", at: pos)
        case "round":
            let a = try b([("precision", .int(0)), ("method", .string("common"))])
            let p = a[0].intValue ?? 0
            let method = try str(a[1])
            guard ["common", "ceil", "floor"].contains(method) else {
                throw templateError("round: method must be 'common', 'ceil' or 'floor'", at: pos)
            }
            if method == "common", case let .int(i) = v { return .int(i) }
            guard let x = v.numberValue else { throw templateError("round: expected a number, got \(v.typeName)", at: pos) }
            let scale = pow(10.0, Double(p))
            let rule: FloatingPointRoundingRule = method == "ceil" ? .up : method == "floor" ? .down : .toNearestOrEven
            return .double((x * scale).rounded(rule) / scale)
        case "reverse":
            _ = try b([])
            if case let .string(s) = v { return .string(makeString(s.unicodeScalars.reversed())) }
            return .list(try iterate(v, pos).reversed())
        case "items":
            _ = try b([])
            switch v {
            case let .dict(d): return .list(d.items.map { .tuple([.string($0.0), $0.1]) })
            case .undefined: return .list([])
            default: throw templateError("filter 'items': expected a mapping, got \(v.typeName)", at: pos)
            }
        case "dictsort":
            let a = try b([("case_sensitive", .bool(false)), ("by", .string("key")), ("reverse", .bool(false))])
            guard case let .dict(d) = v else { throw templateError("dictsort: expected a mapping, got \(v.typeName)", at: pos) }
            let byValue = try str(a[1]) == "value"
            var pairs = d.items.map { Value.tuple([.string($0.0), $0.1]) }
            pairs = try sortValues(pairs, caseSensitive: a[0].truthy, reverse: a[2].truthy, pos) {
                if case let .tuple(t) = $0 { return byValue ? t[1] : t[0] }
                return $0
            }
            return .list(pairs)
        case "unique":
            let a = try b([("case_sensitive", .bool(false)), ("attribute", Value.none)])
            var seen: [Value] = []
            var result: [Value] = []
            for item in try iterate(v, pos) {
                var key = item
                if case .none = a[1] {} else { key = try attribute(item, a[1], pos) }
                if !a[0].truthy, case let .string(s) = key { key = .string(s.lowercased()) }
                if !(try seen.contains(where: { try pyEqual($0, key, work) })) {
                    seen.append(key)
                    result.append(item)
                }
            }
            return .list(result)
        case "sort":
            let a = try b([("reverse", .bool(false)), ("case_sensitive", .bool(false)), ("attribute", Value.none)])
            let attr = a[2]
            return .list(try sortValues(try iterate(v, pos), caseSensitive: a[1].truthy, reverse: a[0].truthy, pos) {
                if case .none = attr { return $0 }
                return try self.attribute($0, attr, pos)
            })
        case "min", "max":
            let a = try b([("case_sensitive", .bool(false)), ("attribute", Value.none)])
            let attr = a[1]
            let sorted = try sortValues(try iterate(v, pos), caseSensitive: a[0].truthy, reverse: false, pos) {
                if case .none = attr { return $0 }
                return try self.attribute($0, attr, pos)
            }
            return (name == "min" ? sorted.first : sorted.last) ?? .undefined("no \(name) item, the sequence was empty")
        case "sum":
            let a = try b([("attribute", Value.none), ("start", .int(0))])
            var total = a[1]
            for item in try iterate(v, pos) {
                var x = item
                if case .none = a[0] {} else { x = try attribute(item, a[0], pos) }
                total = try binary("+", total, x, pos)
            }
            return total
        case "map":
            var items = try iterate(v, pos)
            if let attr = args.keyword.first(where: { $0.0 == "attribute" })?.1 {
                let def = args.keyword.first(where: { $0.0 == "default" })?.1
                items = try items.map {
                    let r = try attribute($0, attr, pos)
                    if r.isUndefined, let d = def { return d }
                    return r
                }
                return .list(items)
            }
            guard case let .string(fname)? = args.positional.first else {
                throw templateError("filter 'map' needs a filter name or attribute=...", at: pos)
            }
            let rest = CallArgs(positional: Array(args.positional.dropFirst()), keyword: args.keyword)
            return .list(try items.map { try filter(fname, $0, rest, pos) })
        case "select", "reject", "selectattr", "rejectattr":
            let byAttr = name.hasSuffix("attr")
            var positional = args.positional
            var attr: Value? = nil
            if byAttr {
                guard !positional.isEmpty else { throw templateError("filter '\(name)' needs an attribute name", at: pos) }
                attr = positional.removeFirst()
            }
            var testName: String? = nil
            if !positional.isEmpty {
                guard case let .string(t) = positional.removeFirst() else {
                    throw templateError("filter '\(name)': the test name must be a string", at: pos)
                }
                testName = t
            }
            let testArgs = CallArgs(positional: positional, keyword: args.keyword)
            let want = name.hasPrefix("select")
            var result: [Value] = []
            for item in try iterate(v, pos) {
                let x = try attr.map { try attribute(item, $0, pos) } ?? item
                let ok = try testName.map { try applyTest($0, x, testArgs, pos) } ?? x.truthy
                if ok == want { result.append(item) }
            }
            return .list(result)
        case "attr":
            let a = try b([("name", nil)])
            return try getattr(v, try str(a[0]), pos)
        case "indent":
            let a = try b([("width", .int(4)), ("first", .bool(false)), ("blank", .bool(false))])
            let ind: String
            if case let .string(s) = a[0] { ind = s } else { ind = String(repeating: " ", count: max(0, min(a[0].intValue ?? 4, 256))) }
            let lines = pySplitlines(try str(v) + "\n")
            var r: String
            if a[2].truthy {
                r = lines.joined(separator: "\n" + ind)
            } else {
                r = lines.first ?? ""
                let rest = lines.dropFirst()
                if !rest.isEmpty { r += "\n" + rest.map { $0.isEmpty ? $0 : ind + $0 }.joined(separator: "\n") }
            }
            if a[1].truthy { r = ind + r }
            return try checkedString(r, pos)
        case "safe":
            _ = try b([])
            return v
        case "escape", "e", "forceescape":
            _ = try b([])
            var r = ""
            for u in try str(v).unicodeScalars {
                switch u {
                case "&": r += "&amp;"
                case "<": r += "&lt;"
                case ">": r += "&gt;"
                case "\"": r += "&#34;"
                case "'": r += "&#39;"
                default: r.unicodeScalars.append(u)
                }
            }
            return .string(r)
        case "bool":
            _ = try b([])
            return .bool(v.truthy)
        default:
            if Self.unsupportedFilters.contains(name) { throw templateError("unsupported filter '\(name)'", at: pos) }
            throw templateError("unknown filter '\(name)'", at: pos)
        }
    }

    /// `attribute=` arguments of filters: "a.b" or an integer index.
    private func attribute(_ item: Value, _ attr: Value, _ pos: SourcePos) throws -> Value {
        if case let .int(i) = attr { return try getitem(item, .int(i), pos) }
        var v = item
        for part in try pyStr(attr, work).split(separator: ".", omittingEmptySubsequences: false) {
            if let i = Int(part) { v = try getitem(v, .int(i), pos) } else { v = try getitem(v, .string(String(part)), pos) }
        }
        return v
    }

    private func sortValues(_ items: [Value], caseSensitive: Bool, reverse: Bool, _ pos: SourcePos,
                            key: (Value) throws -> Value) throws -> [Value] {
        var keyed: [(Value, Value)] = []
        for item in items {
            var k = try key(item)
            if !caseSensitive, case let .string(s) = k { k = .string(s.lowercased()) }
            keyed.append((k, item))
        }
        try keyed.sort { x, y in
            guard let lt = try pyLess(x.0, y.0, work) else {
                throw templateError("cannot sort: '<' not supported between '\(x.0.typeName)' and '\(y.0.typeName)'", at: pos)
            }
            return lt
        }
        let r = keyed.map { $0.1 }
        return reverse ? r.reversed() : r
    }

    private func length(_ v: Value, _ pos: SourcePos) throws -> Int {
        switch v {
        case let .string(s): return s.unicodeScalars.count
        case let .list(a), let .tuple(a): return a.count
        case let .dict(d): return d.count
        case .undefined: return 0
        default: throw templateError("object of type '\(v.typeName)' has no length", at: pos)
        }
    }

    private static func toInt(_ v: Value, base: Int) -> Value? {
        switch v {
        case let .int(i): return .int(i)
        case let .bool(b): return .int(b ? 1 : 0)
        case let .double(d): return d.isFinite && abs(d) < 9.2e18 ? .int(Int(d)) : nil
        case let .string(s):
            let t = pyStrip(s, chars: nil, left: true, right: true).replacingOccurrences(of: "_", with: "")
            if let i = Int(t, radix: base) { return .int(i) }
            if base == 10, let d = Double(t), d.isFinite, abs(d) < 9.2e18 { return .int(Int(d)) }
            return nil
        default: return nil
        }
    }

    private static func toFloat(_ v: Value) -> Value? {
        switch v {
        case let .double(d): return .double(d)
        case let .int(i): return .double(Double(i))
        case let .bool(b): return .double(b ? 1 : 0)
        case let .string(s):
            return Double(pyStrip(s, chars: nil, left: true, right: true)).map { .double($0) }
        default: return nil
        }
    }

    // MARK: Tests

    private func applyTest(_ name: String, _ v: Value, _ args: CallArgs, _ pos: SourcePos) throws -> Bool {
        func one() throws -> Value { try bind(args, "test '\(name)'", [("other", nil)], pos)[0] }
        func none() throws { _ = try bind(args, "test '\(name)'", [], pos) }
        switch name {
        case "defined": try none(); return !v.isUndefined
        case "undefined": try none(); return v.isUndefined
        case "none": try none(); if case .none = v { return true }; return false
        case "boolean": try none(); if case .bool = v { return true }; return false
        case "true": try none(); if case .bool(true) = v { return true }; return false
        case "false": try none(); if case .bool(false) = v { return true }; return false
        case "integer": try none(); if case .int = v { return true }; return false
        case "float": try none(); if case .double = v { return true }; return false
        case "number": try none(); return v.isNumber
        case "string": try none(); if case .string = v { return true }; return false
        case "mapping": try none(); if case .dict = v { return true }; return false
        case "iterable":
            try none()
            switch v {
            case .list, .tuple, .string, .dict, .undefined: return true
            default: return false
            }
        case "sequence":
            try none()
            switch v {
            case .list, .tuple, .string, .dict: return true
            default: return false
            }
        case "callable":
            try none()
            switch v {
            case .function, .macro: return true
            default: return false
            }
        case "odd", "even":
            try none()
            guard let i = v.intValue else {
                try failIfUndefined(v, pos)
                throw templateError("test '\(name)' needs an integer, got \(v.typeName)", at: pos)
            }
            return (i % 2 != 0) == (name == "odd")
        case "divisibleby":
            let n = try one()
            guard let i = v.intValue, let d = n.intValue, d != 0 else {
                throw templateError("test 'divisibleby' needs integers (and a non-zero divisor)", at: pos)
            }
            return i % d == 0
        case "eq", "equalto", "==": return try pyEqual(v, try one(), work)
        case "ne", "!=": return !(try pyEqual(v, try one(), work))
        case "lt", "lessthan", "<": return try compare("<", v, try one(), pos)
        case "le", "<=": return try compare("<=", v, try one(), pos)
        case "gt", "greaterthan", ">": return try compare(">", v, try one(), pos)
        case "ge", ">=": return try compare(">=", v, try one(), pos)
        case "in": return try contains(try one(), v, pos)
        case "lower":
            try none()
            let x = try pyStr(v, work)
            return x == x.lowercased() && x != x.uppercased()
        case "upper":
            try none()
            let x = try pyStr(v, work)
            return x == x.uppercased() && x != x.lowercased()
        case "sameas":
            let o = try one()
            switch (v, o) {
            case let (.namespace(x), .namespace(y)): return x === y
            case let (.function(x), .function(y)): return x === y
            case (.none, .none): return true
            case let (.bool(x), .bool(y)): return x == y
            default: return false
            }
        case "escaped": try none(); return false
        default:
            throw templateError("unknown test '\(name)'", at: pos)
        }
    }

    // MARK: Methods

    private static func dictMethod(_ d: PyDict, _ name: String) -> Value? {
        switch name {
        case "items":
            return .function(Function("dict.items", capturesValues: true) { args, pos in
                _ = try bind(args, "dict.items()", [], pos)
                return .list(d.items.map { .tuple([.string($0.0), $0.1]) })
            })
        case "keys":
            return .function(Function("dict.keys", capturesValues: true) { args, pos in
                _ = try bind(args, "dict.keys()", [], pos)
                return .list(d.keys.map { .string($0) })
            })
        case "values":
            return .function(Function("dict.values", capturesValues: true) { args, pos in
                _ = try bind(args, "dict.values()", [], pos)
                return .list(d.values)
            })
        case "get":
            return .function(Function("dict.get", capturesValues: true) { args, pos in
                let a = try bind(args, "dict.get()", [("key", nil), ("default", Value.none)], pos)
                if case let .string(k) = a[0], let v = d[k] { return v }
                return a[1]
            })
        case "copy":
            return .function(Function("dict.copy", capturesValues: true) { args, pos in
                _ = try bind(args, "dict.copy()", [], pos)
                return .dict(d)
            })
        case "update", "pop", "popitem", "setdefault", "clear":
            return immutable("dict", name)
        default:
            return nil
        }
    }

    private static func immutable(_ type: String, _ name: String) -> Value {
        .function(Function("\(type).\(name)") { _, pos in
            throw templateError("'\(type).\(name)()' is not allowed: chat templates cannot modify \(type)s (as in Hugging Face's immutable sandbox)", at: pos)
        })
    }

    private static func listMethod(_ a: [Value], _ type: String, _ name: String, _ work: Work) -> Value? {
        switch name {
        case "index":
            return .function(Function("\(type).index", capturesValues: true) { args, pos in
                let x = try bind(args, "\(type).index()", [("value", nil)], pos)[0]
                guard let i = try a.firstIndex(where: { try pyEqual($0, x, work) }) else {
                    throw templateError("\(pyDisplay(x)) is not in \(type)", at: pos)
                }
                return .int(i)
            })
        case "count":
            return .function(Function("\(type).count", capturesValues: true) { args, pos in
                let x = try bind(args, "\(type).count()", [("value", nil)], pos)[0]
                return .int(try a.filter { try pyEqual($0, x, work) }.count)
            })
        case "append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear":
            return immutable(type, name)
        default:
            return nil
        }
    }

    private static func stringMethod(_ s: String, _ name: String, _ work: Work) -> Value? {
        func m(_ body: @escaping (CallArgs, SourcePos) throws -> Value) -> Value {
            .function(Function("str.\(name)") { args, pos in
                try work.spend(s.utf8.count >> 4 + 1)
                return try body(args, pos)
            })
        }
        func chars(_ v: Value, _ pos: SourcePos) throws -> String? {
            switch v {
            case .none: return nil
            case let .string(c): return c
            default: throw templateError("str.\(name)(): chars must be a string or none", at: pos)
            }
        }
        func affixes(_ v: Value, _ pos: SourcePos) throws -> [String] {
            switch v {
            case let .string(p): return [p]
            case let .tuple(ps), let .list(ps):
                return try ps.map {
                    guard case let .string(p) = $0 else { throw templateError("str.\(name)(): expected strings", at: pos) }
                    return p
                }
            default: throw templateError("str.\(name)() argument must be a string or a tuple of strings, not \(v.typeName)", at: pos)
            }
        }
        func needString(_ v: Value, _ pos: SourcePos) throws -> String {
            guard case let .string(x) = v else {
                throw templateError("str.\(name)(): expected a string argument, got \(v.typeName)", at: pos)
            }
            return x
        }
        let scalars = { Array(s.unicodeScalars) }
        switch name {
        case "strip", "lstrip", "rstrip":
            return m { args, pos in
                let a = try bind(args, "str.\(name)()", [("chars", Value.none)], pos)
                return .string(pyStrip(s, chars: try chars(a[0], pos), left: name != "rstrip", right: name != "lstrip"))
            }
        case "startswith", "endswith":
            return m { args, pos in
                let a = try bind(args, "str.\(name)()", [("prefix", nil)], pos)
                let u = scalars()
                return .bool(try affixes(a[0], pos).contains { p in
                    let q = Array(p.unicodeScalars)
                    return name == "startswith" ? u.starts(with: q) : u.reversed().starts(with: q.reversed())
                })
            }
        case "split", "rsplit":
            return m { args, pos in
                let a = try bind(args, "str.\(name)()", [("sep", Value.none), ("maxsplit", .int(-1))], pos)
                let sep = try chars(a[0], pos)
                if sep == "" { throw templateError("str.\(name)(): empty separator", at: pos) }
                let maxSplit = a[1].intValue ?? -1
                if name == "split" || maxSplit < 0 {
                    return .list(pySplit(s, sep: sep, maxSplit: maxSplit).map { .string($0) })
                }
                let rev = { (x: String) in makeString(x.unicodeScalars.reversed()) }
                let parts = pySplit(rev(s), sep: sep.map(rev), maxSplit: maxSplit)
                return .list(parts.reversed().map { .string(rev($0)) })
            }
        case "splitlines":
            return m { args, pos in
                _ = try bind(args, "str.splitlines()", [], pos)
                return .list(pySplitlines(s).map { .string($0) })
            }
        case "upper", "lower", "title", "capitalize", "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper":
            return m { args, pos in
                _ = try bind(args, "str.\(name)()", [], pos)
                let u = scalars()
                switch name {
                case "upper": return .string(s.uppercased())
                case "lower": return .string(s.lowercased())
                case "title": return .string(pyTitle(s))
                case "capitalize": return .string(pyCapitalize(s))
                case "isdigit": return .bool(!u.isEmpty && u.allSatisfy { $0.properties.numericType != nil && $0.properties.numericType != .numeric })
                case "isalpha": return .bool(!u.isEmpty && u.allSatisfy { $0.properties.isAlphabetic })
                case "isalnum": return .bool(!u.isEmpty && u.allSatisfy { $0.properties.isAlphabetic || $0.properties.numericType != nil })
                case "isspace": return .bool(!u.isEmpty && u.allSatisfy(isPyWhitespace))
                case "islower": return .bool(s == s.lowercased() && s != s.uppercased())
                default: return .bool(s == s.uppercased() && s != s.lowercased())
                }
            }
        case "replace":
            return m { args, pos in
                let a = try bind(args, "str.replace()", [("old", nil), ("new", nil), ("count", .int(-1))], pos)
                guard let r = pyReplace(s, try needString(a[0], pos), try needString(a[1], pos), count: a[2].intValue ?? -1,
                                        maxBytes: JinjaInterpreter.maxOutputBytes)
                else { throw templateError("str.replace(): result longer than \(JinjaInterpreter.maxOutputBytes >> 20) MiB", at: pos) }
                try work.spend(r.utf8.count >> 4)
                return .string(r)
            }
        case "find", "rfind", "count":
            return m { args, pos in
                let sub = Array(try needString(try bind(args, "str.\(name)()", [("sub", nil)], pos)[0], pos).unicodeScalars)
                let u = scalars()
                if name == "find" { return .int(scalarFind(u, sub) ?? -1) }
                var hits: [Int] = []
                var i = 0
                while let j = scalarFind(u, sub, from: i) {
                    hits.append(j)
                    i = j + max(1, sub.count)
                    if i > u.count { break }
                }
                return .int(name == "count" ? hits.count : (hits.last ?? -1))
            }
        case "join":
            return m { args, pos in
                let it = try bind(args, "str.join()", [("iterable", nil)], pos)[0]
                let items: [Value]
                switch it {
                case let .list(a), let .tuple(a): items = a
                case let .string(x): items = x.unicodeScalars.map { .string(String($0)) }
                case let .dict(d): items = d.keys.map { .string($0) }
                default: throw templateError("str.join(): can only join an iterable", at: pos)
                }
                let parts = try items.enumerated().map { (i, v) -> String in
                    guard case let .string(x) = v else {
                        throw templateError("str.join(): sequence item \(i): expected str instance, \(v.typeName) found", at: pos)
                    }
                    return x
                }
                let r = parts.joined(separator: s)
                if r.utf8.count > JinjaInterpreter.maxOutputBytes { throw templateError("str.join(): result too long", at: pos) }
                return .string(r)
            }
        case "format":
            return m { _, pos in throw templateError("str.format() is not supported", at: pos) }
        default:
            return nil
        }
    }

    // MARK: Globals

    private static func range(_ args: CallArgs, _ pos: SourcePos) throws -> Value {
        guard args.keyword.isEmpty, (1...3).contains(args.positional.count) else {
            throw templateError("range() takes 1 to 3 integer arguments", at: pos)
        }
        let ints = try args.positional.map { v -> Int in
            guard let i = v.intValue else { throw templateError("range(): '\(v.typeName)' object cannot be interpreted as an integer", at: pos) }
            return i
        }
        let (start, stop, step) = ints.count == 1 ? (0, ints[0], 1) : (ints[0], ints[1], ints.count == 3 ? ints[2] : 1)
        guard step != 0 else { throw templateError("range() step must not be zero", at: pos) }
        let n: Int
        if step > 0 { n = stop > start ? (stop - start - 1) / step + 1 : 0 } else { n = stop < start ? (start - stop - 1) / (-step) + 1 : 0 }
        guard n <= maxRange else { throw templateError("range() is too long (more than \(maxRange) items)", at: pos) }
        return .list((0..<n).map { .int(start + $0 * step) })
    }

    private static func dictFromArgs(_ args: CallArgs, _ fn: String, _ pos: SourcePos) throws -> PyDict {
        var d = PyDict()
        guard args.positional.count <= 1 else { throw templateError("\(fn)() takes at most 1 positional argument", at: pos) }
        if let first = args.positional.first {
            switch first {
            case let .dict(src): d = src
            case let .namespace(ns): d = ns.attributes
            default: throw templateError("\(fn)(): expected a mapping, got \(first.typeName)", at: pos)
            }
        }
        for (k, v) in args.keyword { d[k] = v }
        return d
    }

    private static func makeNamespace(_ d: PyDict) -> Namespace {
        let ns = Namespace()
        ns.attributes = d
        return ns
    }

    /// `format` applied to `date` in UTC, or to the current local time when `date` is nil.
    private static func formatTime(_ format: String, at date: Date?) -> String {
        var parts = tm()
        if let date {
            var t = time_t(date.timeIntervalSince1970.rounded(.down))
            gmtime_r(&t, &parts)
        } else {
            var t = time(nil)
            localtime_r(&t, &parts)
        }
        var buf = [CChar](repeating: 0, count: 512)
        let n = strftime(&buf, buf.count, format, &parts)
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// Binds call arguments to named parameters (nil default = required), Python style.
func bind(_ args: CallArgs, _ what: String, _ params: [(String, Value?)], _ pos: SourcePos) throws -> [Value] {
    guard args.positional.count <= params.count else {
        throw templateError("\(what) takes at most \(params.count) argument\(params.count == 1 ? "" : "s") (\(args.positional.count) given)", at: pos)
    }
    var out: [Value?] = params.map { _ in nil }
    for (i, v) in args.positional.enumerated() { out[i] = v }
    for (k, v) in args.keyword {
        guard let i = params.firstIndex(where: { $0.0 == k }) else {
            throw templateError("\(what) got an unexpected keyword argument '\(k)'", at: pos)
        }
        guard out[i] == nil else { throw templateError("\(what) got multiple values for argument '\(k)'", at: pos) }
        out[i] = v
    }
    return try out.enumerated().map { i, v in
        if let v = v { return v }
        if let d = params[i].1 { return d }
        throw templateError("\(what) is missing the required argument '\(params[i].0)'", at: pos)
    }
}

/// Python `str.splitlines()`.
func pySplitlines(_ s: String) -> [String] {
    var lines: [String] = []
    var cur = Scalars()
    let u = Array(s.unicodeScalars)
    var i = 0
    while i < u.count {
        let c = u[i]
        switch c.value {
        case 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029:
            lines.append(makeString(cur))
            cur.removeAll()
            if c == "\r" && i + 1 < u.count && u[i + 1] == "\n" { i += 1 }
        default:
            cur.append(c)
        }
        i += 1
    }
    if !cur.isEmpty { lines.append(makeString(cur)) }
    return lines
}

/// Python `str.title()`: a cased letter after an uncased character starts a word.
func pyTitle(_ s: String) -> String {
    var out = ""
    var prevCased = false
    for u in s.unicodeScalars {
        let cased = u.properties.isCased
        if cased {
            out += prevCased ? String(u).lowercased() : String(u).uppercased()
        } else {
            out.unicodeScalars.append(u)
        }
        prevCased = cased
    }
    return out
}
