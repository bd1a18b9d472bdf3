import Foundation

/// JSON Schema to grammar text (the subset OpenAI's strict mode takes; docs/constrained-decoding.md).
///
/// Output is compact JSON with bounded whitespace between tokens (none, one space, or one newline and up to 20
/// spaces), object properties in schema order (optional ones may be left out), numbers with bounded digits.
/// Every error is `CausalError.invalidArgument` naming the schema path and the keyword.
public enum JSONSchemaGrammar {
    /// Limits that keep compilation bounded for any schema.
    public static let maxDepth = 64
    public static let maxRules = 20_000
    public static let maxEnumValues = 4096
    public static let maxGrammarBytes = 8 << 20
    public static let maxBoundedItems = 256

    /// Grammar text for a schema given as JSON text.
    public static func grammar(schema: String) throws -> String { try grammar(schema: Data(schema.utf8)) }

    public static func grammar(schema: Data) throws -> String {
        let root: HFJSON
        do { root = try HFJSON.parse(schema) } catch let e as HFJSON.SyntaxError {
            throw CausalError.invalidArgument("JSON schema: \(e.description)")
        }
        var c = Compiler(root: root)
        return try c.run()
    }

    /// Grammar text for any JSON object.
    public static let anyObjectGrammar: String = "root ::= object\n" + primitives

    static let primitives = """
    ws ::= ( " " | "\\n" [ ]{0,20} )?
    value ::= object | array | string | number | boolean | null
    object ::= "{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}"
    array ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
    string ::= "\\"" char* "\\""
    char ::= [^"\\\\\\x00-\\x1f] | "\\\\" ( ["\\\\/bfnrt] | "u" [0-9a-fA-F]{4} )
    number ::= "-"? int-part ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?
    integer ::= "-"? int-part
    int-part ::= "0" | [1-9] [0-9]{0,15}
    boolean ::= "true" | "false"
    null ::= "null"

    """

    /// A literal of the grammar format for the given text.
    static func literal(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20 || u.value == 0x7F: out += String(format: "\\x%02X", u.value)
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }

    /// Compact JSON of a value (keys in document order): the exact text an enum/const value must be written as.
    static func compact(_ v: HFJSON) -> String {
        switch v {
        case .null: return "null"
        case let .bool(b): return b ? "true" : "false"
        case let .int(i): return String(i)
        case let .double(d):
            if d == d.rounded(), abs(d) < 1e15 { return String(Int(d)) }
            return "\(d)"
        case let .string(s): return JSONText.quoted(s)
        case let .array(a): return "[" + a.map(compact).joined(separator: ",") + "]"
        case let .object(o): return "{" + o.members.map { JSONText.quoted($0.0) + ":" + compact($0.1) }.joined(separator: ",") + "}"
        }
    }

    struct Compiler {
        let root: HFJSON
        var rules: [String] = []
        var names = Set<String>(["root", "ws", "value", "object", "array", "string", "char", "number", "integer",
                                 "int-part", "boolean", "null"])
        var refRules: [String: String] = [:]
        var bytes = 0

        init(root: HFJSON) { self.root = root }

        func fail(_ path: String, _ msg: String) -> CausalError { .invalidArgument("JSON schema at \(path): \(msg)") }

        mutating func run() throws -> String {
            let body = try value(root, path: "#", depth: 0)
            return "root ::= \(body)\n" + rules.joined() + primitives
        }

        mutating func addRule(_ base: String, _ body: String, path: String) throws -> String {
            guard rules.count < maxRules else { throw fail(path, "the schema needs more than \(maxRules) grammar rules") }
            var clean = String(base.unicodeScalars.map { c -> Character in
                (c.properties.isAlphabetic && c.isASCII) || ("0"..."9").contains(c) ? Character(c) : "-"
            }.prefix(40))
            if clean.isEmpty { clean = "r" }
            var n = clean
            var k = 1
            while names.contains(n) { k += 1; n = "\(clean)-\(k)" }
            names.insert(n)
            let line = "\(n) ::= \(body)\n"
            bytes += line.utf8.count
            guard bytes <= maxGrammarBytes else { throw fail(path, "the schema's grammar exceeds \(maxGrammarBytes) bytes") }
            rules.append(line)
            return n
        }

        static let annotations: Set<String> = ["title", "description", "default", "examples", "$schema", "$id",
                                               "$comment", "format", "$defs", "definitions", "strict", "readOnly",
                                               "writeOnly", "deprecated", "contentEncoding", "contentMediaType",
                                               "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
                                               "name"]
        static let unsupported: [String] = ["not", "if", "then", "else", "allOf", "oneOf", "patternProperties",
                                            "prefixItems", "contains", "minContains", "maxContains", "uniqueItems",
                                            "dependentRequired", "dependentSchemas", "dependencies", "propertyNames",
                                            "unevaluatedProperties", "unevaluatedItems", "minProperties",
                                            "maxProperties", "additionalItems", "$dynamicRef", "$recursiveRef"]

        /// A grammar expression for values valid against `s`.
        mutating func value(_ s: HFJSON, path: String, depth: Int) throws -> String {
            guard depth <= maxDepth else { throw fail(path, "nested deeper than \(maxDepth) levels") }
            if case let .bool(b) = s {
                if b { return "value" }
                throw fail(path, "the schema `false` accepts nothing")
            }
            guard let o = s.objectValue else { throw fail(path, "a schema must be an object or a boolean, got \(s.brief)") }
            for k in Compiler.unsupported where o[k] != nil {
                if k == "allOf", let a = o[k]?.arrayValue, a.count == 1 { continue }
                if k == "oneOf" { continue }
                if k == "uniqueItems", o[k]?.boolValue == false { continue }
                throw fail(path, "the keyword '\(k)' is not supported")
            }
            if let ref = o["$ref"] {
                let others = o.keys.filter { $0 != "$ref" && !Compiler.annotations.contains($0) }
                if let k = others.first { throw fail(path, "'\(k)' next to '$ref' is not supported") }
                guard let r = ref.stringValue else { throw fail(path + "/$ref", "must be a string") }
                return try reference(r, path: path + "/$ref", depth: depth)
            }
            if let all = o["allOf"]?.arrayValue {   // a single-element allOf
                return try value(all[0], path: path + "/allOf/0", depth: depth + 1)
            }
            for key in ["anyOf", "oneOf"] {
                guard let any = o[key] else { continue }
                let others = o.keys.filter { $0 != key && !Compiler.annotations.contains($0) }
                if let k = others.first { throw fail(path, "'\(k)' next to '\(key)' is not supported (put it inside each alternative)") }
                guard let alts = any.arrayValue else { throw fail(path + "/\(key)", "must be an array") }
                guard !alts.isEmpty else { throw fail(path + "/\(key)", "an empty \(key) accepts nothing") }
                var parts: [String] = []
                for (i, a) in alts.enumerated() { parts.append(try value(a, path: path + "/\(key)/\(i)", depth: depth + 1)) }
                return "( " + parts.joined(separator: " | ") + " )"
            }
            if let c = o["const"] { return try literalValues([c], o, path: path + "/const") }
            if let e = o["enum"] {
                guard let vals = e.arrayValue else { throw fail(path + "/enum", "must be an array") }
                guard !vals.isEmpty else { throw fail(path + "/enum", "an empty enum accepts nothing") }
                guard vals.count <= maxEnumValues else {
                    throw fail(path + "/enum", "\(vals.count) values exceed the limit of \(maxEnumValues)")
                }
                return try literalValues(vals, o, path: path + "/enum")
            }
            var types: [String]
            switch o["type"] {
            case nil:
                types = []
                if o["properties"] != nil || o["required"] != nil { types = ["object"] }
                else if o["items"] != nil { types = ["array"] }
                else if o["pattern"] != nil || o["minLength"] != nil || o["maxLength"] != nil { types = ["string"] }
                if types.isEmpty { return "value" }
            case let .string(t)?: types = [t]
            case let .array(ts)?:
                types = try ts.map { t in
                    guard let s = t.stringValue else { throw fail(path + "/type", "must list type names, got \(t.brief)") }
                    return s
                }
                guard !types.isEmpty else { throw fail(path + "/type", "an empty type list accepts nothing") }
            case let t?: throw fail(path + "/type", "must be a string or an array of strings, got \(t.brief)")
            }
            var parts: [String] = []
            for t in types {
                switch t {
                case "object": parts.append(try object(o, path: path, depth: depth))
                case "array": parts.append(try array(o, path: path, depth: depth))
                case "string": parts.append(try string(o, path: path))
                case "number": parts.append("number")
                case "integer": parts.append("integer")
                case "boolean": parts.append("boolean")
                case "null": parts.append("null")
                default: throw fail(path + "/type", "unknown type '\(t)'")
                }
            }
            return parts.count == 1 ? parts[0] : "( " + parts.joined(separator: " | ") + " )"
        }

        /// `enum` / `const`: the values as compact JSON literals (those of the schema's `type`, when it has one).
        mutating func literalValues(_ vals: [HFJSON], _ o: HFJSONObject, path: String) throws -> String {
            var allowedTypes: Set<String>? = nil
            if let t = o["type"] {
                allowedTypes = Set((t.arrayValue ?? [t]).compactMap(\.stringValue))
            }
            func typeOK(_ v: HFJSON) -> Bool {
                guard let a = allowedTypes else { return true }
                switch v {
                case .null: return a.contains("null")
                case .bool: return a.contains("boolean")
                case .int: return a.contains("integer") || a.contains("number")
                case let .double(d): return a.contains("number") || (a.contains("integer") && d == d.rounded())
                case .string: return a.contains("string")
                case .array: return a.contains("array")
                case .object: return a.contains("object")
                }
            }
            var seen = Set<String>()
            var lits: [String] = []
            for v in vals where typeOK(v) {
                let l = literal(compact(v))
                if seen.insert(l).inserted { lits.append(l) }
            }
            guard !lits.isEmpty else { throw fail(path, "no value has the schema's type") }
            let body = lits.joined(separator: " | ")
            if lits.count == 1 { return body }
            return try addRule(path.split(separator: "/").last.map(String.init) ?? "enum", body, path: path)
        }

        mutating func reference(_ r: String, path: String, depth: Int) throws -> String {
            if let n = refRules[r] { return n }
            guard r == "#" || r.hasPrefix("#/") else { throw fail(path, "only local references ('#/...') are supported, got '\(r)'") }
            var target = root
            if r.count > 2 {
                for raw in r.dropFirst(2).split(separator: "/", omittingEmptySubsequences: false) {
                    let part = (String(raw).removingPercentEncoding ?? String(raw))
                        .replacingOccurrences(of: "~1", with: "/").replacingOccurrences(of: "~0", with: "~")
                    if let o = target.objectValue, let v = o[part] { target = v }
                    else if let a = target.arrayValue, let i = Int(part), i >= 0, i < a.count { target = a[i] }
                    else { throw fail(path, "the reference '\(r)' does not resolve ('\(part)' is missing)") }
                }
            }
            // Name the rule before compiling its body, so recursive references become recursive rules.
            guard rules.count < maxRules else { throw fail(path, "the schema needs more than \(maxRules) grammar rules") }
            var base = "ref-" + (r.split(separator: "/").last.map(String.init) ?? "root")
            if r == "#" { base = "ref-root" }
            let idx = rules.count
            rules.append("")
            var clean = String(base.unicodeScalars.map { c -> Character in
                (c.properties.isAlphabetic && c.isASCII) || ("0"..."9").contains(c) ? Character(c) : "-"
            }.prefix(40))
            var k = 1
            let stem = clean
            while names.contains(clean) { k += 1; clean = "\(stem)-\(k)" }
            names.insert(clean)
            refRules[r] = clean
            let body = try value(target, path: r, depth: depth + 1)
            let line = "\(clean) ::= \(body)\n"
            bytes += line.utf8.count
            guard bytes <= maxGrammarBytes else { throw fail(path, "the schema's grammar exceeds \(maxGrammarBytes) bytes") }
            rules[idx] = line
            return clean
        }

        mutating func object(_ o: HFJSONObject, path: String, depth: Int) throws -> String {
            if let ap = o["additionalProperties"] {
                let isFalse = ap.boolValue == false
                if !isFalse && o["properties"] != nil {
                    throw fail(path + "/additionalProperties", "only false is supported next to 'properties'")
                }
                if !isFalse, ap.boolValue != true {
                    // Any keys, values of one schema.
                    let v = try value(ap, path: path + "/additionalProperties", depth: depth + 1)
                    return try addRule("map", "\"{\" ws ( string ws \":\" ws \(v) ws ( \",\" ws string ws \":\" ws \(v) ws )* )? \"}\"", path: path)
                }
            }
            guard let propsV = o["properties"] else {
                if let req = o["required"]?.arrayValue, let first = req.first {
                    throw fail(path + "/required", "'\(first.stringValue ?? first.brief)' is required but there are no properties")
                }
                return o["additionalProperties"]?.boolValue == false ? "\"{\" ws \"}\"" : "object"
            }
            guard let props = propsV.objectValue else { throw fail(path + "/properties", "must be an object") }
            var required = Set<String>()
            if let r = o["required"] {
                guard let arr = r.arrayValue else { throw fail(path + "/required", "must be an array") }
                for (i, x) in arr.enumerated() {
                    guard let n = x.stringValue else { throw fail(path + "/required/\(i)", "must be a string") }
                    guard props[n] != nil else {
                        throw fail(path + "/required", "'\(n)' is required but not in 'properties' (additionalProperties is false)")
                    }
                    required.insert(n)
                }
            }
            var kvs: [(String, Bool)] = []
            for (k, v) in props.members {
                let vp = path + "/properties/" + k.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
                let val = try value(v, path: vp, depth: depth + 1)
                kvs.append(("\(literal(JSONText.quoted(k))) ws \":\" ws \(val) ws", required.contains(k)))
            }
            if kvs.isEmpty { return "\"{\" ws \"}\"" }
            // after[i]: the properties from i on, after one has been written (each needs a comma first).
            // first[i]: the properties from i on, before any has been written.
            let n = kvs.count
            var after = [String](repeating: "", count: n + 1)
            var first = [String](repeating: "", count: n + 1)
            after[n] = "\"\""
            first[n] = "\"\""
            let base = (path == "#" ? "obj" : path.split(separator: "/").last.map(String.init) ?? "obj")
            for i in stride(from: n - 1, through: 0, by: -1) {
                let (kv, req) = kvs[i]
                let withIt = "\",\" ws \(kv) \(after[i + 1])"
                let a = req ? withIt : "( \(withIt) | \(after[i + 1]) )"
                after[i] = i == n - 1 ? a : try addRule(base + "-rest", a, path: path)
                let f = req ? "\(kv) \(after[i + 1])" : "( \(kv) \(after[i + 1]) | \(first[i + 1]) )"
                first[i] = i == n - 1 ? f : try addRule(base + "-props", f, path: path)
            }
            return try addRule(base, "\"{\" ws \(first[0]) \"}\"", path: path)
        }

        mutating func array(_ o: HFJSONObject, path: String, depth: Int) throws -> String {
            let item: String
            if let it = o["items"] {
                if it.arrayValue != nil { throw fail(path + "/items", "an array of schemas (tuple form) is not supported") }
                item = try value(it, path: path + "/items", depth: depth + 1)
            } else {
                item = "value"
            }
            let lo = o["minItems"]?.intValue ?? 0
            let hi = o["maxItems"]?.intValue
            if let m = o["minItems"], m.intValue == nil || lo < 0 { throw fail(path + "/minItems", "must be an integer >= 0") }
            if let m = o["maxItems"], m.intValue == nil || hi! < 0 { throw fail(path + "/maxItems", "must be an integer >= 0") }
            if let h = hi, h < lo { throw fail(path, "maxItems \(h) is below minItems \(lo): no array fits") }
            guard lo <= maxBoundedItems else { throw fail(path + "/minItems", "\(lo) exceeds the limit of \(maxBoundedItems)") }
            let one = "\(item) ws"
            let more = "\",\" ws \(item) ws"
            let body: String
            if hi == 0 {
                body = "\"[\" ws \"]\""
            } else if let h = hi, h <= maxBoundedItems {
                let rest = lo > 1 ? "( \(more) ){\(lo - 1),\(h - 1)}" : "( \(more) ){0,\(h - 1)}"
                let list = "\(one) \(rest)"
                body = lo == 0 ? "\"[\" ws ( \(list) )? \"]\"" : "\"[\" ws \(list) \"]\""
            } else {
                let rest = lo > 1 ? "( \(more) ){\(lo - 1),}" : "( \(more) )*"
                let list = "\(one) \(rest)"
                body = lo == 0 ? "\"[\" ws ( \(list) )? \"]\"" : "\"[\" ws \(list) \"]\""
            }
            let base = (path == "#" ? "arr" : path.split(separator: "/").last.map(String.init) ?? "arr") + "-array"
            return try addRule(base, body, path: path)
        }

        mutating func string(_ o: HFJSONObject, path: String) throws -> String {
            let lo = o["minLength"]?.intValue ?? 0
            let hi = o["maxLength"]?.intValue
            if let m = o["minLength"], m.intValue == nil || lo < 0 { throw fail(path + "/minLength", "must be an integer >= 0") }
            if let m = o["maxLength"], m.intValue == nil || hi! < 0 { throw fail(path + "/maxLength", "must be an integer >= 0") }
            if let h = hi, h < lo { throw fail(path, "maxLength \(h) is below minLength \(lo): no string fits") }
            if let p = o["pattern"] {
                guard let pat = p.stringValue else { throw fail(path + "/pattern", "must be a string") }
                if o["minLength"] != nil || o["maxLength"] != nil {
                    throw fail(path, "'pattern' together with minLength/maxLength is not supported")
                }
                var rx = RegexToGrammar(pattern: pat, path: path + "/pattern")
                let body = try rx.convert()
                let base = (path.split(separator: "/").last.map(String.init) ?? "pattern") + "-pattern"
                return try addRule(base, "\"\\\"\" \(body) \"\\\"\"", path: path)
            }
            if lo == 0 && hi == nil { return "string" }
            guard lo <= 1000, (hi ?? 0) <= 1000 else {
                throw fail(path, "minLength/maxLength above 1000 are not supported")
            }
            let rep = hi.map { "{\(lo),\($0)}" } ?? "{\(lo),}"
            let base = (path.split(separator: "/").last.map(String.init) ?? "str") + "-string"
            return try addRule(base, "\"\\\"\" char\(rep) \"\\\"\"", path: path)
        }
    }
}

/// A regular-expression subset (JSON Schema `pattern`) to a grammar expression for the *content* of a JSON string
/// (characters written as JSON needs them: `"` as `\"`, control characters escaped). Supported: literals, `.`,
/// classes `[...]` with ranges and negation, escapes `\d \D \w \W \s \S` and escaped punctuation, groups `( )`
/// and `(?: )`, alternation `|`, quantifiers `* + ? {m} {m,} {m,n}`, anchors `^` at the start and `$` at the end
/// (an unanchored side matches any text there, as JSON Schema's search semantics say).
struct RegexToGrammar {
    let s: [UInt32]
    var i = 0
    let path: String
    var depth = 0

    init(pattern: String, path: String) {
        s = pattern.unicodeScalars.map(\.value)
        self.path = path
    }

    func fail(_ msg: String) -> CausalError {
        .invalidArgument("JSON schema at \(path): \(msg) (supported: literals, ., [classes], \\d \\w \\s, groups, |, * + ? {m,n}, ^ and $)")
    }

    mutating func convert() throws -> String {
        var anchoredStart = false, anchoredEnd = false
        var body = s
        if body.first == 94 { anchoredStart = true; body.removeFirst() }
        if body.last == 36, !(body.count >= 2 && body[body.count - 2] == 92) { anchoredEnd = true; body.removeLast() }
        var inner = RegexToGrammar(scalars: body, path: path)
        let e = try inner.alternation()
        if inner.i < inner.s.count { throw fail("unexpected '\(Unicode.Scalar(inner.s[inner.i]).map { String($0) } ?? "?")' at offset \(inner.i)") }
        return (anchoredStart ? "" : "char* ") + "( " + e + " )" + (anchoredEnd ? "" : " char*")
    }

    private init(scalars: [UInt32], path: String) { s = scalars; self.path = path }

    mutating func alternation() throws -> String {
        var alts = [try sequence()]
        while i < s.count && s[i] == 124 { i += 1; alts.append(try sequence()) }
        return alts.count == 1 ? alts[0] : "( " + alts.joined(separator: " | ") + " )"
    }

    mutating func sequence() throws -> String {
        var items: [String] = []
        while i < s.count && s[i] != 124 && s[i] != 41 {
            var a = try atom()
            while i < s.count {
                let c = s[i]
                if c == 42 { a = "( \(a) )*"; i += 1 }
                else if c == 43 { a = "( \(a) )+"; i += 1 }
                else if c == 63 { a = "( \(a) )?"; i += 1 }
                else if c == 123, let (lo, hi, n) = quantifier(at: i) {
                    guard lo <= 1000, (hi ?? 0) <= 1000 else { throw fail("repetition bounds above 1000 are not supported") }
                    if let h = hi, h < lo { throw fail("repetition {\(lo),\(h)} is reversed") }
                    a = "( \(a) ){\(lo),\(hi.map(String.init) ?? "")}"
                    i = n
                } else { break }
                if i < s.count && (s[i] == 63 || s[i] == 43) { throw fail("lazy and possessive quantifiers are not supported") }
            }
            items.append(a)
        }
        return items.isEmpty ? "\"\"" : items.joined(separator: " ")
    }

    /// `{m}`, `{m,}`, `{m,n}` at position k: (m, n or nil, position after).
    func quantifier(at k: Int) -> (Int, Int?, Int)? {
        var j = k + 1
        func num() -> Int? {
            let st = j
            var v = 0
            while j < s.count, s[j] >= 48, s[j] <= 57 { v = min(v * 10 + Int(s[j] - 48), 1 << 30); j += 1 }
            return j > st ? v : nil
        }
        guard let lo = num() else { return nil }
        var hi: Int? = lo
        if j < s.count && s[j] == 44 { j += 1; hi = num() }
        guard j < s.count && s[j] == 125 else { return nil }
        return (lo, hi, j + 1)
    }

    static let digit: [(UInt32, UInt32)] = [(48, 57)]
    static let word: [(UInt32, UInt32)] = [(48, 57), (65, 90), (95, 95), (97, 122)]
    static let space: [(UInt32, UInt32)] = [(9, 13), (32, 32)]

    static func complement(_ r: [(UInt32, UInt32)]) -> [(UInt32, UInt32)] {
        GrammarCompiler.normalize(r, negated: true)
    }

    mutating func atom() throws -> String {
        let c = s[i]
        switch c {
        case 40:   // (
            i += 1
            depth += 1
            guard depth <= 100 else { throw fail("groups nested deeper than 100") }
            if i + 1 < s.count && s[i] == 63 {
                guard s[i + 1] == 58 else { throw fail("lookaround and named groups are not supported") }
                i += 2
            }
            let e = try alternation()
            guard i < s.count && s[i] == 41 else { throw fail("unclosed group") }
            i += 1
            depth -= 1
            return "( \(e) )"
        case 91: return try charClass()
        case 46:   // .
            i += 1
            return RegexToGrammar.classExpr(GrammarCompiler.normalize([(10, 10)], negated: true))
        case 94, 36: throw fail("anchors are supported only at the start and end of the pattern")
        case 42, 43, 63, 123: throw fail("a quantifier with nothing to repeat at offset \(i)")
        case 92:
            i += 1
            guard i < s.count else { throw fail("the pattern ends with a backslash") }
            let e = s[i]
            i += 1
            if let r = RegexToGrammar.escapeClass(e) { return RegexToGrammar.classExpr(GrammarCompiler.normalize(r, negated: false)) }
            if (48...57).contains(e) || e == 98 || e == 66 || e == 107 { throw fail("backreferences and word boundaries are not supported") }
            return RegexToGrammar.classExpr([(try literalEscape(e), try literalEscape(e))])
        default:
            i += 1
            return RegexToGrammar.classExpr([(c, c)])
        }
    }

    static func escapeClass(_ e: UInt32) -> [(UInt32, UInt32)]? {
        switch e {
        case 100: return digit
        case 68: return complement(digit)
        case 119: return word
        case 87: return complement(word)
        case 115: return space
        case 83: return complement(space)
        default: return nil
        }
    }

    func literalEscape(_ e: UInt32) throws -> UInt32 {
        switch e {
        case 110: return 10
        case 116: return 9
        case 114: return 13
        case 102: return 12
        case 118: return 11
        default:
            if (65...90).contains(e) || (97...122).contains(e) { throw fail("the escape '\\\(Unicode.Scalar(e)!)' is not supported") }
            return e
        }
    }

    mutating func charClass() throws -> String {
        i += 1
        var negated = false
        if i < s.count && s[i] == 94 { negated = true; i += 1 }
        var ranges: [(UInt32, UInt32)] = []
        var firstItem = true
        while true {
            guard i < s.count else { throw fail("unclosed character class") }
            var c = s[i]
            if c == 93 && !firstItem { i += 1; break }
            firstItem = false
            i += 1
            if c == 92 {
                guard i < s.count else { throw fail("unclosed character class") }
                let e = s[i]
                i += 1
                if let r = RegexToGrammar.escapeClass(e) { ranges += r; continue }
                c = try literalEscape(e)
            }
            if i + 1 < s.count && s[i] == 45 && s[i + 1] != 93 {
                i += 1
                var hi = s[i]
                i += 1
                if hi == 92 {
                    guard i < s.count else { throw fail("unclosed character class") }
                    hi = try literalEscape(s[i])
                    i += 1
                }
                guard hi >= c else { throw fail("a reversed range in a character class") }
                ranges.append((c, hi))
            } else {
                ranges.append((c, c))
            }
        }
        let set = GrammarCompiler.normalize(ranges, negated: negated)
        if set.isEmpty { throw fail("a character class that matches nothing") }
        return RegexToGrammar.classExpr(set)
    }

    /// A grammar expression for one string character from a set of scalars, JSON-escaped where JSON needs it.
    static func classExpr(_ set: [(UInt32, UInt32)]) -> String {
        var raw: [(UInt32, UInt32)] = []
        var escaped: [String] = []
        for (lo, hi) in set {
            var a = lo
            while a <= hi {
                if a < 0x20 || a == 34 || a == 92 {
                    let esc: String
                    switch a {
                    case 34: esc = "\\\\\\\""
                    case 92: esc = "\\\\\\\\"
                    case 10: esc = "\\\\n"
                    case 13: esc = "\\\\r"
                    case 9: esc = "\\\\t"
                    case 8: esc = "\\\\b"
                    case 12: esc = "\\\\f"
                    default: esc = String(format: "\\\\u%04x", a)
                    }
                    escaped.append("\"\(esc)\"")
                    a += 1
                    continue
                }
                var b = a
                while b < hi && !(b + 1 < 0x20 || b + 1 == 34 || b + 1 == 92) { b += 1 }
                raw.append((a, b))
                if b == hi { break }
                a = b + 1
            }
        }
        var parts = escaped
        if !raw.isEmpty {
            var cls = "["
            for (lo, hi) in raw {
                cls += hexEscape(lo)
                if hi > lo { cls += "-" + hexEscape(hi) }
            }
            parts.insert(cls + "]", at: 0)
        }
        return parts.count == 1 ? parts[0] : "( " + parts.joined(separator: " | ") + " )"
    }

    static func hexEscape(_ c: UInt32) -> String {
        if (48...57).contains(c) || (65...90).contains(c) || (97...122).contains(c) { return String(Unicode.Scalar(c)!) }
        if c < 0x100 { return String(format: "\\x%02X", c) }
        if c < 0x10000 { return String(format: "\\u%04X", c) }
        return String(format: "\\U%08X", c)
    }
}
