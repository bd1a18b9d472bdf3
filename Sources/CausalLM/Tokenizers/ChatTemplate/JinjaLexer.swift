import Foundation

enum TokenKind: Equatable {
    case text(String)
    case variableBegin, variableEnd, blockBegin, blockEnd
    case name(String)
    case string(String)
    case integer(Int)
    case float(Double)
    case op(String)
    case eof

    /// How the token reads in an error message.
    var display: String {
        switch self {
        case .text: return "template text"
        case .variableBegin: return "'{{'"
        case .variableEnd: return "'}}'"
        case .blockBegin: return "'{%'"
        case .blockEnd: return "'%}'"
        case let .name(n): return "'\(n)'"
        case let .string(s): return "string \(pyStringRepr(s))"
        case let .integer(i): return "integer \(i)"
        case let .float(d): return "float \(pyFloatRepr(d))"
        case let .op(o): return "'\(o)'"
        case .eof: return "end of template"
        }
    }
}

struct Token {
    var kind: TokenKind
    var pos: SourcePos
}

/// Splits a template into text and tag tokens the way Jinja2's lexer does with
/// `trim_blocks=True, lstrip_blocks=True` (Hugging Face's settings): newlines are normalized to "\n",
/// one trailing newline is dropped, `{%-`/`-%}` strip whitespace, `{%+`/`+%}` disable lstrip/trim.
struct JinjaLexer {
    private let s: Scalars
    private var lineStarts: [Int] = [0]
    private var tokens: [Token] = []

    init(_ source: String) {
        // Jinja: split on \r\n, \r, \n; join with \n; drop one trailing newline (keep_trailing_newline=False).
        var out = Scalars()
        out.reserveCapacity(source.unicodeScalars.count)
        var it = source.unicodeScalars.makeIterator()
        var pending: Unicode.Scalar? = it.next()
        while let u = pending {
            pending = it.next()
            if u == "\r" {
                if pending == "\n" { pending = it.next() }
                out.append("\n")
            } else {
                out.append(u)
            }
        }
        if out.last == "\n" { out.removeLast() }
        s = out
        for (i, u) in s.enumerated() where u == "\n" { lineStarts.append(i + 1) }
    }

    func pos(_ i: Int) -> SourcePos {
        var lo = 0, hi = lineStarts.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if lineStarts[mid] <= i { lo = mid } else { hi = mid - 1 }
        }
        return SourcePos(line: lo + 1, column: i - lineStarts[lo] + 1)
    }

    private func at(_ i: Int, _ lit: String) -> Bool {
        var j = i
        for u in lit.unicodeScalars {
            guard j < s.count, s[j] == u else { return false }
            j += 1
        }
        return true
    }

    private func skipWhitespace(_ i: Int) -> Int {
        var j = i
        while j < s.count && isPyWhitespace(s[j]) { j += 1 }
        return j
    }

    private mutating func emitText(_ text: ArraySlice<Unicode.Scalar>, at start: Int) {
        if !text.isEmpty { tokens.append(Token(kind: .text(makeString(text)), pos: pos(start))) }
    }

    /// Applies `{%-` (strip all whitespace before) or lstrip_blocks to the text in front of a tag.
    private func stripBefore(_ text: ArraySlice<Unicode.Scalar>, sign: Unicode.Scalar?, lstrip: Bool,
                             lineStarting: Bool) -> ArraySlice<Unicode.Scalar> {
        if sign == "-" {
            var hi = text.endIndex
            while hi > text.startIndex && isPyWhitespace(text[hi - 1]) { hi -= 1 }
            return text[text.startIndex..<hi]
        }
        if sign != "+" && lstrip {
            let lpos = (text.lastIndex(of: "\n").map { $0 + 1 }) ?? text.startIndex
            if (lpos > text.startIndex || lineStarting) && lpos < text.endIndex
                && text[lpos...].allSatisfy(isPyWhitespace)
            {
                return text[text.startIndex..<lpos]
            }
        }
        return text
    }

    mutating func tokenize() throws -> [Token] {
        let n = s.count
        var p = 0
        var lineStarting = true
        while p < n {
            // The next tag start: "{{", "{%" or "{#".
            var i = p
            var kind: Unicode.Scalar = " "
            while i + 1 < n {
                if s[i] == "{" && (s[i + 1] == "{" || s[i + 1] == "%" || s[i + 1] == "#") {
                    kind = s[i + 1]
                    break
                }
                i += 1
            }
            if i + 1 >= n {
                emitText(s[p..<n], at: p)
                break
            }
            let tagStart = i
            var j = i + 2
            var sign: Unicode.Scalar? = nil
            if j < n && (s[j] == "-" || s[j] == "+") {
                sign = s[j]
                j += 1
            }
            // {% raw %} ... {% endraw %}
            var rawEnd: Int? = nil
            if kind == "%" {
                var k = skipWhitespace(j)
                if at(k, "raw") {
                    k = skipWhitespace(k + 3)
                    if at(k, "-%}") { rawEnd = skipWhitespace(k + 3) } else if at(k, "%}") { rawEnd = k + 2 }
                }
            }
            let text = stripBefore(s[p..<tagStart], sign: sign, lstrip: kind != "{", lineStarting: lineStarting)
            emitText(text, at: p)

            if let afterRaw = rawEnd {
                p = try lexRaw(from: afterRaw, openedAt: tagStart, lineStarting: s[afterRaw - 1] == "\n",
                               newLineStarting: &lineStarting)
                continue
            }
            switch kind {
            case "#":
                p = try lexComment(from: j, openedAt: tagStart, lineStarting: &lineStarting)
            case "%":
                tokens.append(Token(kind: .blockBegin, pos: pos(tagStart)))
                p = try lexTag(from: j, block: true, openedAt: tagStart, lineStarting: &lineStarting)
            default:
                tokens.append(Token(kind: .variableBegin, pos: pos(tagStart)))
                p = try lexTag(from: j, block: false, openedAt: tagStart, lineStarting: &lineStarting)
            }
        }
        tokens.append(Token(kind: .eof, pos: pos(n)))
        return tokens
    }

    private mutating func lexComment(from start: Int, openedAt: Int, lineStarting: inout Bool) throws -> Int {
        var i = start
        while i < s.count {
            if at(i, "+#}") {
                lineStarting = false
                return i + 3
            }
            if at(i, "-#}") {
                let e = skipWhitespace(i + 3)
                lineStarting = s[e - 1] == "\n"
                return e
            }
            if at(i, "#}") {
                if i + 2 < s.count && s[i + 2] == "\n" {
                    lineStarting = true
                    return i + 3
                }
                lineStarting = false
                return i + 2
            }
            i += 1
        }
        throw templateError("comment '{#' is never closed with '#}'", at: pos(openedAt))
    }

    private mutating func lexRaw(from start: Int, openedAt: Int, lineStarting: Bool,
                                 newLineStarting: inout Bool) throws -> Int {
        var i = start
        while i + 1 < s.count {
            if at(i, "{%") {
                var k = i + 2
                var sign: Unicode.Scalar? = nil
                if k < s.count && (s[k] == "-" || s[k] == "+") {
                    sign = s[k]
                    k += 1
                }
                k = skipWhitespace(k)
                if at(k, "endraw") {
                    k = skipWhitespace(k + 6)
                    var end: Int? = nil
                    if at(k, "+%}") {
                        end = k + 3
                    } else if at(k, "-%}") {
                        end = skipWhitespace(k + 3)
                    } else if at(k, "%}") {
                        end = k + 2
                        if end! < s.count && s[end!] == "\n" { end! += 1 }
                    }
                    if let e = end {
                        let text = stripBefore(s[start..<i], sign: sign, lstrip: true, lineStarting: lineStarting)
                        emitText(text, at: start)
                        newLineStarting = s[e - 1] == "\n"
                        return e
                    }
                }
            }
            i += 1
        }
        throw templateError("'{% raw %}' is never closed with '{% endraw %}'", at: pos(openedAt))
    }

    /// Lexes the inside of `{% ... %}` or `{{ ... }}` up to and including the closing delimiter.
    private mutating func lexTag(from start: Int, block: Bool, openedAt: Int, lineStarting: inout Bool) throws -> Int {
        var i = start
        var balance: [Unicode.Scalar] = []
        let close = block ? "%}" : "}}"
        while true {
            guard i < s.count else {
                if let open = balance.last {
                    throw templateError("unexpected end of template: expected '\(open)' before the end of the \(block ? "'{%'" : "'{{'") tag opened", at: pos(openedAt))
                }
                throw templateError("\(block ? "'{%'" : "'{{'") tag is never closed with '\(close)'", at: pos(openedAt))
            }
            if balance.isEmpty {
                if block && at(i, "+%}") {
                    tokens.append(Token(kind: .blockEnd, pos: pos(i)))
                    lineStarting = false
                    return i + 3
                }
                if at(i, "-" + close) {
                    tokens.append(Token(kind: block ? .blockEnd : .variableEnd, pos: pos(i)))
                    let e = skipWhitespace(i + 3)
                    lineStarting = s[e - 1] == "\n"
                    return e
                }
                if at(i, close) {
                    tokens.append(Token(kind: block ? .blockEnd : .variableEnd, pos: pos(i)))
                    if block && i + 2 < s.count && s[i + 2] == "\n" {
                        lineStarting = true
                        return i + 3
                    }
                    lineStarting = false
                    return i + 2
                }
            }
            let u = s[i]
            if isPyWhitespace(u) {
                i += 1
                continue
            }
            let here = pos(i)
            if u.properties.numericType == .decimal && u.isASCII {
                i = try lexNumber(i)
                continue
            }
            if u == "_" || u.properties.isXIDStart {
                var j = i + 1
                while j < s.count && (s[j] == "_" || s[j].properties.isXIDContinue) { j += 1 }
                tokens.append(Token(kind: .name(makeString(s[i..<j])), pos: here))
                i = j
                continue
            }
            if u == "'" || u == "\"" {
                i = try lexString(i)
                continue
            }
            // Operators, longest first.
            var op: String? = nil
            for cand in ["//", "**", "==", "!=", ">=", "<="] where at(i, cand) {
                op = cand
                break
            }
            if op == nil && "+-/*%~[](){}<>=.:|,;".unicodeScalars.contains(u) { op = String(u) }
            guard let o = op else {
                throw templateError("unexpected character \(pyStringRepr(String(u))) inside a tag", at: here)
            }
            switch o {
            case "(": balance.append(")")
            case "[": balance.append("]")
            case "{": balance.append("}")
            case ")", "]", "}":
                guard let expected = balance.popLast() else {
                    throw templateError("unexpected '\(o)'", at: here)
                }
                if expected.description != o {
                    throw templateError("unexpected '\(o)', expected '\(expected)'", at: here)
                }
            default: break
            }
            tokens.append(Token(kind: .op(o), pos: here))
            i += o.unicodeScalars.count
        }
    }

    private func digitRun(_ i: Int, _ isDigit: (Unicode.Scalar) -> Bool) -> Int {
        // (\d+_)*\d+
        var j = i
        guard j < s.count, isDigit(s[j]) else { return i }
        while j < s.count {
            if isDigit(s[j]) {
                j += 1
            } else if s[j] == "_" && j + 1 < s.count && isDigit(s[j + 1]) {
                j += 1
            } else {
                break
            }
        }
        return j
    }

    private mutating func lexNumber(_ i: Int) throws -> Int {
        let here = pos(i)
        let dec: (Unicode.Scalar) -> Bool = { $0.isASCII && $0.properties.numericType == .decimal }
        let clean: (ArraySlice<Unicode.Scalar>) -> String = { makeString($0.filter { $0 != "_" }) }
        // 0x / 0o / 0b integers
        if s[i] == "0" && i + 2 < s.count {
            let prefix = s[i + 1].properties.lowercaseMapping
            let radix: Int? = prefix == "x" ? 16 : prefix == "o" ? 8 : prefix == "b" ? 2 : nil
            if let r = radix {
                let isDigit: (Unicode.Scalar) -> Bool = { $0.isASCII && Int(String($0), radix: r) != nil }
                var j = i + 2
                if j < s.count && s[j] == "_" { j += 1 }
                let e = digitRun(j, isDigit)
                if e > j {
                    guard let v = Int(clean(s[j..<e]), radix: r) else {
                        throw templateError("integer literal is too large", at: here)
                    }
                    tokens.append(Token(kind: .integer(v), pos: here))
                    return e
                }
            }
        }
        let intEnd = digitRun(i, dec)
        let afterDot = i > 0 && s[i - 1] == "."
        var e = intEnd
        var isFloat = false
        if !afterDot {
            if e + 1 < s.count && s[e] == "." && dec(s[e + 1]) {
                e = digitRun(e + 1, dec)
                isFloat = true
            }
            if e < s.count && (s[e] == "e" || s[e] == "E") {
                var k = e + 1
                if k < s.count && (s[k] == "+" || s[k] == "-") { k += 1 }
                let ee = digitRun(k, dec)
                if ee > k {
                    e = ee
                    isFloat = true
                }
            }
        }
        if isFloat {
            guard let d = Double(clean(s[i..<e])) else {
                throw templateError("malformed float literal", at: here)
            }
            tokens.append(Token(kind: .float(d), pos: here))
            return e
        }
        guard let v = Int(clean(s[i..<intEnd])) else {
            throw templateError("integer literal is too large", at: here)
        }
        tokens.append(Token(kind: .integer(v), pos: here))
        return intEnd
    }

    private mutating func lexString(_ start: Int) throws -> Int {
        let quote = s[start]
        let here = pos(start)
        var out = Scalars()
        var i = start + 1
        func hexValue(_ from: Int, _ count: Int) throws -> UInt32 {
            guard from + count <= s.count,
                  let v = UInt32(makeString(s[from..<(from + count)]), radix: 16)
            else { throw templateError("truncated \\x/\\u escape in string literal", at: pos(from - 2)) }
            return v
        }
        while true {
            guard i < s.count else {
                throw templateError("unclosed string literal (missing closing \(quote == "'" ? "\"'\"" : "'\"'"))", at: here)
            }
            let u = s[i]
            if u == quote { break }
            if u != "\\" {
                out.append(u)
                i += 1
                continue
            }
            guard i + 1 < s.count else { i += 1; continue }
            let e = s[i + 1]
            i += 2
            switch e {
            case "n": out.append("\n")
            case "t": out.append("\t")
            case "r": out.append("\r")
            case "\\": out.append("\\")
            case "'": out.append("'")
            case "\"": out.append("\"")
            case "a": out.append("\u{07}")
            case "b": out.append("\u{08}")
            case "f": out.append("\u{0C}")
            case "v": out.append("\u{0B}")
            case "\n": break  // line continuation
            case "0"..."7":
                var v = e.value - 0x30
                var k = 0
                while k < 2 && i < s.count && ("0"..."7").contains(s[i]) {
                    v = v * 8 + (s[i].value - 0x30)
                    i += 1
                    k += 1
                }
                out.append(Unicode.Scalar(v)!)
            case "x", "u", "U":
                let count = e == "x" ? 2 : e == "u" ? 4 : 8
                let v = try hexValue(i, count)
                guard let sc = Unicode.Scalar(v) else {
                    throw templateError("invalid code point in string escape", at: pos(i - 2))
                }
                out.append(sc)
                i += count
            default:
                out.append("\\")
                out.append(e)
            }
        }
        tokens.append(Token(kind: .string(makeString(out)), pos: here))
        return i + 1
    }
}
