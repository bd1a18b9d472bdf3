import Foundation

// MARK: - Public values

/// One turn of a conversation, as chat templates see it (`message['role']`, `message['content']`).
public struct ChatMessage: Sendable, Codable, Equatable, Hashable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A value passed into a chat template (`render(variables:)`).
/// Objects are unordered here; when one is handed to a template its keys are taken in sorted order
/// (so `tojson` and `.items()` are deterministic).
public indirect enum JinjaValue: Sendable, Equatable {
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JinjaValue])
    case object([String: JinjaValue])
    /// A JSON value as parsed, objects keeping their key order (as Python's dicts do, so `tojson` of tools and
    /// tool-call arguments renders exactly as transformers renders them).
    case json(HFJSON)
}

extension JinjaValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: JinjaValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JinjaValue)...) {
        var d: [String: JinjaValue] = [:]
        for (k, v) in elements { d[k] = v }
        self = .object(d)
    }
    public init(nilLiteral: ()) { self = .none }
}

/// A chat template failed to parse or render. `message` says what failed and where (line:column).
public struct ChatTemplateError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
    public init(_ message: String) { self.message = message }
}

extension ChatTemplateError: LocalizedError {
    public var errorDescription: String? { message }
}

// MARK: - Positions and errors

struct SourcePos: Sendable, Equatable, CustomStringConvertible {
    var line: Int
    var column: Int
    var description: String { "\(line):\(column)" }
}

/// "chat template: <what> at <line>:<column>"
func templateError(_ what: String, at pos: SourcePos?) -> ChatTemplateError {
    if let p = pos { return ChatTemplateError("chat template: \(what) at \(p)") }
    return ChatTemplateError("chat template: \(what)")
}

// MARK: - Runtime values

/// An insertion-ordered dictionary with string keys (Python dicts keep insertion order).
struct PyDict {
    private(set) var keys: [String] = []
    private var storage: [String: Value] = [:]

    init() {}

    var count: Int { keys.count }
    var isEmpty: Bool { keys.isEmpty }

    subscript(key: String) -> Value? {
        get { storage[key] }
        set {
            if let v = newValue {
                if storage.updateValue(v, forKey: key) == nil { keys.append(key) }
            } else if storage.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    var items: [(String, Value)] { keys.map { ($0, storage[$0]!) } }
    var values: [Value] { keys.map { storage[$0]! } }
}

/// `namespace(...)`: the one mutable object templates have (`{% set ns.x = ... %}`).
final class Namespace {
    var attributes = PyDict()
}

/// A callable value: a global function, a bound method (`'x'.strip`) or `loop.cycle`.
final class Function {
    let name: String
    /// Bound methods hold their receiver; such functions may not be stored in a namespace (see `checkStorable`).
    let capturesValues: Bool
    let body: (CallArgs, SourcePos) throws -> Value
    init(_ name: String, capturesValues: Bool = false, _ body: @escaping (CallArgs, SourcePos) throws -> Value) {
        self.name = name
        self.capturesValues = capturesValues
        self.body = body
    }
}

/// A `{% macro %}`; `scope` is cleared after rendering to break the scope <-> macro cycle.
final class Macro {
    let def: MacroDef
    var scope: Scope?
    init(def: MacroDef, scope: Scope) {
        self.def = def
        self.scope = scope
    }
}

/// The `loop` variable of one for-loop iteration.
final class LoopState {
    let index: Int
    let items: [Value]
    init(index: Int, items: [Value]) {
        self.index = index
        self.items = items
    }
}

struct CallArgs {
    var positional: [Value] = []
    var keyword: [(String, Value)] = []
}

enum Value {
    /// Jinja's default `Undefined`: falsy, renders as "", errors on attribute access. The payload says why.
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([Value])
    case tuple([Value])
    case dict(PyDict)
    case namespace(Namespace)
    case function(Function)
    case macro(Macro)
    case loop(LoopState)

    init(_ v: JinjaValue) {
        switch v {
        case .none: self = .none
        case let .bool(b): self = .bool(b)
        case let .int(i): self = .int(i)
        case let .double(d): self = .double(d)
        case let .string(s): self = .string(s)
        case let .array(a): self = .list(a.map(Value.init))
        case let .object(o):
            var d = PyDict()
            for k in o.keys.sorted() { d[k] = Value(o[k]!) }
            self = .dict(d)
        case let .json(j): self = Value(json: j)
        }
    }

    init(json j: HFJSON) {
        switch j {
        case .null: self = .none
        case let .bool(b): self = .bool(b)
        case let .int(i): self = .int(i)
        case let .double(d): self = .double(d)
        case let .string(s): self = .string(s)
        case let .array(a): self = .list(a.map { Value(json: $0) })
        case let .object(o):
            var d = PyDict()
            for (k, v) in o.members { d[k] = Value(json: v) }
            self = .dict(d)
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true } else { return false } }

    /// Python's `type(x).__name__`, for error messages.
    var typeName: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .list: return "list"
        case .tuple: return "tuple"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .function: return "function"
        case .macro: return "Macro"
        case .loop: return "LoopContext"
        }
    }

    /// Python truthiness.
    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case let .bool(b): return b
        case let .int(i): return i != 0
        case let .double(d): return d != 0
        case let .string(s): return !s.isEmpty
        case let .list(a), let .tuple(a): return !a.isEmpty
        case let .dict(d): return !d.isEmpty
        case .namespace, .function, .macro, .loop: return true
        }
    }

    /// Integer view (bool counts as int, as in Python).
    var intValue: Int? {
        switch self {
        case let .int(i): return i
        case let .bool(b): return b ? 1 : 0
        default: return nil
        }
    }

    var numberValue: Double? {
        switch self {
        case let .int(i): return Double(i)
        case let .bool(b): return b ? 1 : 0
        case let .double(d): return d
        default: return nil
        }
    }

    var isNumber: Bool { numberValue != nil }
}

/// Work done by one render (comparisons, serialization, copies), so that templates with quadratic or
/// exponential growth stop with an error instead of running for hours.
final class Work {
    static let limit = 100_000_000
    static let maxStringBytes = 16 << 20
    var used = 0

    enum Exhausted: Error {
        case steps
        case tooLong
    }

    @inline(__always) func spend(_ n: Int) throws {
        used &+= n
        if used > Self.limit { throw Exhausted.steps }
    }
}

// MARK: - Python equality and ordering

func pyEqual(_ a: Value, _ b: Value, _ w: Work) throws -> Bool {
    try w.spend(1)
    switch (a, b) {
    case (.undefined, .undefined): return true
    case (.undefined, _), (_, .undefined): return false
    case (.none, .none): return true
    case let (.string(x), .string(y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
    case let (.list(x), .list(y)), let (.tuple(x), .tuple(y)):
        guard x.count == y.count else { return false }
        for (p, q) in zip(x, y) where !(try pyEqual(p, q, w)) { return false }
        return true
    case let (.dict(x), .dict(y)):
        guard x.count == y.count else { return false }
        for (k, v) in x.items {
            guard let u = y[k], try pyEqual(v, u, w) else { return false }
        }
        return true
    case let (.namespace(x), .namespace(y)): return x === y
    case let (.function(x), .function(y)): return x === y
    case let (.macro(x), .macro(y)): return x === y
    case let (.loop(x), .loop(y)): return x === y
    default:
        if let i = a.intValue, let j = b.intValue { return i == j }
        if let x = a.numberValue, let y = b.numberValue { return x == y }
        return false
    }
}

/// Python `a < b`; nil when the types cannot be ordered.
func pyLess(_ a: Value, _ b: Value, _ w: Work) throws -> Bool? {
    try w.spend(1)
    switch (a, b) {
    case let (.string(x), .string(y)):
        return x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars) { $0.value < $1.value }
    case let (.list(x), .list(y)), let (.tuple(x), .tuple(y)):
        for (p, q) in zip(x, y) where !(try pyEqual(p, q, w)) { return try pyLess(p, q, w) }
        return x.count < y.count
    default:
        if let i = a.intValue, let j = b.intValue { return i < j }
        if let x = a.numberValue, let y = b.numberValue { return x < y }
        return nil
    }
}

// MARK: - str(), repr(), json.dumps()

/// Python float repr (Swift's shortest round-trip description matches it for finite values).
func pyFloatRepr(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d < 0 ? "-inf" : "inf" }
    return d.description
}

/// Python `str(x)` (what `{{ x }}` renders).
func pyStr(_ v: Value, _ w: Work) throws -> String {
    switch v {
    case .undefined: return ""
    case let .string(s): return s
    default:
        var out = ""
        try pyRepr(v, into: &out, w)
        return out
    }
}

/// `repr(x)` for error messages: bounded and never failing.
func pyDisplay(_ v: Value) -> String {
    let w = Work()
    w.used = Work.limit - 10_000
    var out = ""
    do { try pyRepr(v, into: &out, w, maxBytes: 200) } catch { return out + "..." }
    return out
}

/// `str(x)` for messages (`raise_exception`): bounded and never failing.
func pyDisplayStr(_ v: Value) -> String {
    if case let .string(s) = v { return s }
    if case .undefined = v { return "" }
    return pyDisplay(v)
}

/// Python `repr(x)` (how values inside lists and dicts print), appended to `out`.
func pyRepr(_ v: Value, into out: inout String, _ w: Work, maxBytes: Int = Work.maxStringBytes) throws {
    try w.spend(1)
    if out.utf8.count > maxBytes { throw Work.Exhausted.tooLong }
    switch v {
    case .undefined: out += "Undefined"
    case .none: out += "None"
    case let .bool(b): out += b ? "True" : "False"
    case let .int(i): out += String(i)
    case let .double(d): out += pyFloatRepr(d)
    case let .string(s): out += pyStringRepr(s)
    case let .list(a):
        out += "["
        for (i, x) in a.enumerated() {
            if i > 0 { out += ", " }
            try pyRepr(x, into: &out, w, maxBytes: maxBytes)
        }
        out += "]"
    case let .tuple(a):
        out += "("
        for (i, x) in a.enumerated() {
            if i > 0 { out += ", " }
            try pyRepr(x, into: &out, w, maxBytes: maxBytes)
        }
        out += a.count == 1 ? ",)" : ")"
    case let .dict(d):
        try pyDictRepr(d, into: &out, w, maxBytes: maxBytes)
    case let .namespace(ns):
        out += "<Namespace "
        try pyDictRepr(ns.attributes, into: &out, w, maxBytes: maxBytes)
        out += ">"
    case let .function(f): out += "<function \(f.name)>"
    case let .macro(m): out += "<Macro '\(m.def.name)'>"
    case let .loop(l): out += "<LoopContext \(l.index + 1)/\(l.items.count)>"
    }
}

private func pyDictRepr(_ d: PyDict, into out: inout String, _ w: Work, maxBytes: Int) throws {
    out += "{"
    for (i, (k, x)) in d.items.enumerated() {
        if i > 0 { out += ", " }
        out += pyStringRepr(k) + ": "
        try pyRepr(x, into: &out, w, maxBytes: maxBytes)
    }
    out += "}"
}

private func hex(_ v: UInt32, width: Int) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, width - s.count)) + s
}

func pyStringRepr(_ s: String) -> String {
    let quote: Unicode.Scalar = (s.contains("'") && !s.contains("\"")) ? "\"" : "'"
    var out = String(quote)
    for u in s.unicodeScalars {
        switch u {
        case quote, "\\": out += "\\" + String(u)
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if isPyPrintable(u) {
                out.unicodeScalars.append(u)
            } else if u.value < 0x100 {
                out += "\\x" + hex(u.value, width: 2)
            } else if u.value < 0x10000 {
                out += "\\u" + hex(u.value, width: 4)
            } else {
                out += "\\U" + hex(u.value, width: 8)
            }
        }
    }
    out.unicodeScalars.append(quote)
    return out
}

private func isPyPrintable(_ u: Unicode.Scalar) -> Bool {
    if u == " " { return true }
    switch u.properties.generalCategory {
    case .control, .format, .surrogate, .privateUse, .unassigned, .lineSeparator, .paragraphSeparator, .spaceSeparator:
        return false
    default:
        return true
    }
}

struct JSONOptions {
    var indent: String? = nil
    var itemSeparator: String = ", "
    var keySeparator: String = ": "
    var sortKeys = false
    var ensureASCII = false
}

/// `json.dumps(x, ensure_ascii=False, ...)` (Hugging Face's `tojson`), appended to `out`.
func pyJSON(_ v: Value, _ opts: JSONOptions, into out: inout String, level: Int = 0, _ w: Work, pos: SourcePos) throws {
    try w.spend(1)
    if out.utf8.count > Work.maxStringBytes { throw Work.Exhausted.tooLong }
    func newline(_ l: Int) {
        guard let ind = opts.indent else { return }
        out += "\n"
        for _ in 0..<l { out += ind }
    }
    func object(_ d: PyDict) throws {
        if d.isEmpty { out += "{}"; return }
        var items = d.items
        if opts.sortKeys {
            items.sort { $0.0.unicodeScalars.lexicographicallyPrecedes($1.0.unicodeScalars) { $0.value < $1.value } }
        }
        out += "{"
        for (i, (k, x)) in items.enumerated() {
            if i > 0 { out += opts.itemSeparator }
            newline(level + 1)
            out += JSONText.quoted(k, asciiOnly: opts.ensureASCII) + opts.keySeparator
            try pyJSON(x, opts, into: &out, level: level + 1, w, pos: pos)
        }
        newline(level)
        out += "}"
    }
    switch v {
    case .none: out += "null"
    case let .bool(b): out += b ? "true" : "false"
    case let .int(i): out += String(i)
    case let .double(d):
        if d.isNaN { out += "NaN" } else if d.isInfinite { out += d < 0 ? "-Infinity" : "Infinity" } else { out += d.description }
    case let .string(s): out += JSONText.quoted(s, asciiOnly: opts.ensureASCII)
    case let .list(a), let .tuple(a):
        if a.isEmpty { out += "[]"; return }
        out += "["
        for (i, x) in a.enumerated() {
            if i > 0 { out += opts.itemSeparator }
            newline(level + 1)
            try pyJSON(x, opts, into: &out, level: level + 1, w, pos: pos)
        }
        newline(level)
        out += "]"
    case let .dict(d): try object(d)
    case let .namespace(ns): try object(ns.attributes)
    case let .undefined(why):
        throw templateError("tojson: cannot serialize an undefined value (\(why))", at: pos)
    case .function, .macro, .loop:
        throw templateError("tojson: object of type '\(v.typeName)' is not JSON serializable", at: pos)
    }
}

// MARK: - String helpers (Python semantics: strings are sequences of code points)

/// Python `str.isspace()` for one code point.
func isPyWhitespace(_ u: Unicode.Scalar) -> Bool {
    switch u.value {
    case 0x09...0x0D, 0x1C...0x1F, 0x20, 0x85, 0xA0: return true
    default: return u.value > 0x7F && u.properties.isWhitespace
    }
}

typealias Scalars = [Unicode.Scalar]

func makeString<S: Sequence>(_ s: S) -> String where S.Element == Unicode.Scalar {
    var v = String.UnicodeScalarView()
    v.append(contentsOf: s)
    return String(v)
}

/// Index of the first occurrence of `needle` in `hay` at or after `from`.
func scalarFind(_ hay: Scalars, _ needle: Scalars, from: Int = 0) -> Int? {
    if needle.isEmpty { return from <= hay.count ? from : nil }
    guard hay.count >= needle.count else { return nil }
    var i = from
    while i + needle.count <= hay.count {
        if hay[i] == needle[0] {
            var j = 1
            while j < needle.count && hay[i + j] == needle[j] { j += 1 }
            if j == needle.count { return i }
        }
        i += 1
    }
    return nil
}

func pyStrip(_ s: String, chars: String?, left: Bool, right: Bool) -> String {
    let a = Array(s.unicodeScalars)
    let strip: (Unicode.Scalar) -> Bool
    if let c = chars {
        let set = Set(c.unicodeScalars)
        strip = { set.contains($0) }
    } else {
        strip = isPyWhitespace
    }
    var lo = 0, hi = a.count
    if left { while lo < hi && strip(a[lo]) { lo += 1 } }
    if right { while hi > lo && strip(a[hi - 1]) { hi -= 1 } }
    return makeString(a[lo..<hi])
}

/// Index of the first occurrence of `needle` in `hay` at or after `from` (UTF-8 bytes: a code-point
/// sequence matches exactly where its encoding does).
func byteFind(_ hay: [UInt8], _ needle: [UInt8], from: Int = 0) -> Int? {
    if needle.isEmpty { return from <= hay.count ? from : nil }
    guard hay.count >= needle.count else { return nil }
    let first = needle[0], last = hay.count - needle.count
    var i = from
    while i <= last {
        if hay[i] == first {
            var j = 1
            while j < needle.count && hay[i + j] == needle[j] { j += 1 }
            if j == needle.count { return i }
        }
        i += 1
    }
    return nil
}

func pyContains(_ hay: String, _ needle: String) -> Bool {
    byteFind(Array(hay.utf8), Array(needle.utf8)) != nil
}

/// Python `str.replace(old, new, count)`; nil when the result would exceed `maxBytes`.
func pyReplace(_ s: String, _ old: String, _ new: String, count: Int, maxBytes: Int) -> String? {
    let n = Array(new.utf8)
    var out: [UInt8] = []
    var done = 0
    if old.isEmpty {
        let a = Array(s.unicodeScalars)
        for u in a {
            if count < 0 || done < count { out += n; done += 1 }
            out += Array(String(u).utf8)
            if out.count > maxBytes { return nil }
        }
        if count < 0 || done < count { out += n }
        return out.count > maxBytes ? nil : String(decoding: out, as: UTF8.self)
    }
    let a = Array(s.utf8), o = Array(old.utf8)
    var i = 0
    while i < a.count {
        if (count < 0 || done < count), let j = byteFind(a, o, from: i) {
            out += a[i..<j]
            out += n
            i = j + o.count
            done += 1
            if out.count > maxBytes { return nil }
        } else {
            out += a[i...]
            break
        }
    }
    return out.count > maxBytes ? nil : String(decoding: out, as: UTF8.self)
}

/// Python `str.split(sep, maxsplit)`.
func pySplit(_ s: String, sep: String?, maxSplit: Int) -> [String] {
    var parts: [String] = []
    if let sep = sep {
        let b = Array(s.utf8), p = Array(sep.utf8)
        var i = 0
        while maxSplit < 0 || parts.count < maxSplit, let j = byteFind(b, p, from: i) {
            parts.append(String(decoding: b[i..<j], as: UTF8.self))
            i = j + p.count
        }
        parts.append(String(decoding: b[i...], as: UTF8.self))
        return parts
    }
    let a = Array(s.unicodeScalars)
    var i = 0
    while true {
        while i < a.count && isPyWhitespace(a[i]) { i += 1 }
        if i >= a.count { break }
        if maxSplit >= 0 && parts.count >= maxSplit {
            parts.append(makeString(a[i...]))
            break
        }
        var j = i
        while j < a.count && !isPyWhitespace(a[j]) { j += 1 }
        parts.append(makeString(a[i..<j]))
        i = j
    }
    return parts
}

/// Python `str.capitalize()`.
func pyCapitalize(_ s: String) -> String {
    guard let f = s.unicodeScalars.first else { return s }
    return String(f).uppercased() + makeString(s.unicodeScalars.dropFirst()).lowercased()
}

/// Jinja's `title` filter: words start after whitespace, '-', '(', '{', '[' or '<'.
func jinjaTitle(_ s: String) -> String {
    var out = ""
    var atStart = true
    for u in s.unicodeScalars {
        let sep = isPyWhitespace(u) || "-({[<".unicodeScalars.contains(u)
        if sep {
            out.unicodeScalars.append(u)
            atStart = true
        } else if atStart {
            out += String(u).uppercased()
            atStart = false
        } else {
            out += String(u).lowercased()
        }
    }
    return out
}
