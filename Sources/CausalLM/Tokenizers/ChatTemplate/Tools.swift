import Foundation

// Tool calls (function calling) on top of chat templates: conversations whose messages carry tool calls and tool
// results, tools rendered through the model's own template when it has a tool section (Qwen2.5's `{% if tools %}`),
// else through a generic system prompt (documented in docs/server-api.md, "Tool calls"), and the model's tool-call
// output parsed back into calls.

/// A function the model may call: an OpenAI `tools[i]` entry (`{"type": "function", "function": {...}}`).
public struct ChatTool: Sendable, Equatable {
    /// The whole entry as given, keys in their order (templates print it with `tojson`).
    public var json: HFJSON
    public var name: String
    public var description: String?
    /// The JSON Schema of the arguments (nil: any object).
    public var parameters: HFJSON?

    /// Reads an OpenAI tool entry; errors name the field (relative to the entry, e.g. `function.name`).
    public init(json: HFJSON) throws {
        guard let o = json.objectValue else { throw CausalError.invalidArgument("expected an object, got \(json.typeName)") }
        if let t = o["type"], t != .string("function") {
            throw CausalError.invalidArgument("type: only 'function' tools are supported, got \(t.brief)")
        }
        guard let f = o["function"]?.objectValue else {
            throw CausalError.invalidArgument("function: missing (expected an object with 'name')")
        }
        guard let n = f["name"]?.stringValue else { throw CausalError.invalidArgument("function.name: missing or not a string") }
        guard !n.isEmpty, n.count <= 64,
              n.unicodeScalars.allSatisfy({ ($0.isASCII && ($0.properties.isAlphabetic || $0.properties.numericType != nil)) || $0 == "_" || $0 == "-" || $0 == "." })
        else {
            throw CausalError.invalidArgument("function.name: '\(n)' must be 1 to 64 characters among a-z, A-Z, 0-9, '_', '-' and '.'")
        }
        if let d = f["description"], !d.isNull, d.stringValue == nil {
            throw CausalError.invalidArgument("function.description: expected a string, got \(d.typeName)")
        }
        if let p = f["parameters"], !p.isNull, p.objectValue == nil {
            throw CausalError.invalidArgument("function.parameters: expected a JSON Schema object, got \(p.typeName)")
        }
        self.json = json
        name = n
        description = f["description"]?.stringValue
        parameters = f["parameters"].flatMap { $0.isNull ? nil : $0 }
    }

    public init(name: String, description: String? = nil, parameters: HFJSON? = nil) {
        var f = HFJSONObject()
        f.append("name", .string(name))
        if let description { f.append("description", .string(description)) }
        if let parameters { f.append("parameters", parameters) }
        json = .object(HFJSONObject([("type", .string("function")), ("function", .object(f))]))
        self.name = name; self.description = description; self.parameters = parameters
    }
}

/// A call of a tool: what the model asked for (`arguments` is JSON text, as the OpenAI API carries it).
public struct ChatToolCall: Sendable, Equatable {
    public var id: String
    public var name: String
    public var arguments: String

    public init(id: String, name: String, arguments: String) {
        self.id = id; self.name = name; self.arguments = arguments
    }
}

/// One message of a conversation with tools: `system`, `user`, `assistant` (text and/or tool calls) or `tool`
/// (the result of the call `toolCallID`).
public struct ChatTurn: Sendable, Equatable {
    public var role: String
    /// nil: no content (an assistant turn that only calls tools).
    public var content: String?
    public var toolCalls: [ChatToolCall]
    public var toolCallID: String?
    public var name: String?

    public init(role: String, content: String?, toolCalls: [ChatToolCall] = [], toolCallID: String? = nil, name: String? = nil) {
        self.role = role; self.content = content; self.toolCalls = toolCalls; self.toolCallID = toolCallID; self.name = name
    }

    public init(_ m: ChatMessage) { self.init(role: m.role, content: m.content) }
}

/// How the model is told to call tools and how its calls are recognised.
public enum ToolCallFormat {
    public static let open = "<tool_call>"
    public static let close = "</tool_call>"

    /// The text of one call as the model writes it (and as the history shows a call the model made):
    /// `<tool_call>\n{"name": NAME, "arguments": ARGS}\n</tool_call>`.
    public static func text(_ call: ChatToolCall) -> String {
        let args = (try? HFJSON.parse(Data(call.arguments.utf8))).map { ToolJSON.python($0) } ?? JSONText.quoted(call.arguments)
        return open + "\n{\"name\": " + JSONText.quoted(call.name) + ", \"arguments\": " + args + "}\n" + close
    }

    /// The system-prompt section that offers `tools` to a model whose chat template has no tool support.
    public static func genericSystemSection(_ tools: [ChatTool]) -> String {
        var s = "# Tools\n\nYou can call functions to help with the user's request. Their signatures, one JSON object per line, are between <tools> and </tools>:\n<tools>\n"
        for t in tools { s += ToolJSON.python(t.json) + "\n" }
        s += "</tools>\n\nTo call a function, answer with only a JSON object holding its name and arguments between <tool_call> and </tool_call>, one block per call:\n"
        s += "<tool_call>\n{\"name\": \"<function name>\", \"arguments\": <the arguments as a JSON object>}\n</tool_call>"
        return s
    }

    /// The JSON Schema (text) of one call's JSON (`{"name": ..., "arguments": {...}}`) for one of `tools`: each tool's
    /// parameters under `arguments`, its local references (`#/...`) moved to where the parameters now sit.
    public static func callSchema(_ tools: [ChatTool]) -> String {
        func one(_ t: ChatTool, at base: String) -> HFJSON {
            let params = t.parameters.map { rebase($0, base + "/properties/arguments") } ?? .object(HFJSONObject([("type", .string("object"))]))
            let props = HFJSONObject([("name", .object(HFJSONObject([("const", .string(t.name))]))), ("arguments", params)])
            return .object(HFJSONObject([("type", .string("object")), ("properties", .object(props)),
                                         ("required", .array([.string("name"), .string("arguments")])),
                                         ("additionalProperties", .bool(false))]))
        }
        if tools.count == 1 { return ToolJSON.compact(one(tools[0], at: "#")) }
        return ToolJSON.compact(.object(HFJSONObject([("anyOf", .array(tools.enumerated().map { one($1, at: "#/anyOf/\($0)") }))])))
    }

    /// The grammar (docs/constrained-decoding.md) of a forced answer, the text after the `<tool_call>\n` the prompt
    /// ends with: one call's JSON (`callSchema(tools)`), nothing after it; or with `parallel`, one or more calls:
    /// `JSON\n</tool_call>` followed by any number of `\n<tool_call>\nJSON\n</tool_call>` (an end token may come after
    /// each closing tag). Throws the schema compiler's error (a path into `callSchema(tools)`).
    public static func callGrammar(_ tools: [ChatTool], parallel: Bool) throws -> String {
        let g = try JSONSchemaGrammar.grammar(schema: callSchema(tools))
        guard parallel else { return g }
        let head = "root ::= "
        guard g.hasPrefix(head) else { throw CausalError.invalidArgument("tool call grammar: the schema's grammar does not start with its root rule") }
        // The schema compiler's rule names never hold '_', so `tool_call_json` cannot clash with one.
        let one = "tool_call_json"
        let close = JSONSchemaGrammar.literal("\n" + ToolCallFormat.close)
        let open = JSONSchemaGrammar.literal("\n" + ToolCallFormat.open + "\n")
        return "root ::= \(one) \(close) ( \(open) \(one) \(close) )*\n" + one + " ::= " + g.dropFirst(head.count)
    }

    /// `schema` with every local `$ref` (`#` or `#/...`) prefixed by `base`.
    public static func rebase(_ schema: HFJSON, _ base: String) -> HFJSON {
        switch schema {
        case let .array(a): return .array(a.map { rebase($0, base) })
        case let .object(o):
            var out = HFJSONObject()
            for (k, v) in o.members {
                if k == "$ref", let r = v.stringValue, r == "#" || r.hasPrefix("#/") {
                    out.append(k, .string(base + r.dropFirst()))
                } else {
                    out.append(k, rebase(v, base))
                }
            }
            return .object(out)
        default: return schema
        }
    }
}

extension ChatTemplate {
    /// Whether the template renders tools itself: it reads a `tools` variable (as Qwen2.5's `{%- if tools %}` does).
    public var rendersTools: Bool {
        var rest = source[...]
        while let r = rest.range(of: "tools") {
            let before = r.lowerBound > source.startIndex ? source[source.index(before: r.lowerBound)] : " "
            let after = r.upperBound < source.endIndex ? source[r.upperBound] : " "
            func isWord(_ c: Character) -> Bool { c.isLetter || c.isNumber || c == "_" }
            // `tools` as a name, not inside `<tools>` text or `tool_calls`-like identifiers.
            if !isWord(before) && !isWord(after) && before != "<" && before != "/" && after != ">" { return true }
            rest = source[r.upperBound...]
        }
        return false
    }

    /// Renders a conversation with tools. With a template that `rendersTools`, `messages` go in in Hugging Face's shape
    /// (`tool_calls: [{id, type, function: {name, arguments}}]` with the arguments as an object, `tool_call_id`) and
    /// `tools` as given. Otherwise the generic rendering: the tools are described in the system message
    /// (`ToolCallFormat.genericSystemSection`, appended to the first system message or inserted as one), an assistant
    /// turn's calls are written into its text as `<tool_call>` blocks, and `tool` results become a user message of
    /// `<tool_response>` blocks (consecutive results merged), so any template sees only system/user/assistant text.
    public func render(turns: [ChatTurn], tools: [ChatTool], addGenerationPrompt: Bool,
                       bosToken: String = "", eosToken: String = "") throws -> String {
        if rendersTools {
            var vars: [String: JinjaValue] = ["messages": .json(.array(turns.map(Self.hfMessage)))]
            if !tools.isEmpty { vars["tools"] = .json(.array(tools.map(\.json))) }
            return try render(messages: [], addGenerationPrompt: addGenerationPrompt, bosToken: bosToken,
                              eosToken: eosToken, variables: vars)
        }
        return try render(messages: Self.genericMessages(turns: turns, tools: tools), addGenerationPrompt: addGenerationPrompt,
                          bosToken: bosToken, eosToken: eosToken)
    }

    static func hfMessage(_ t: ChatTurn) -> HFJSON {
        var o = HFJSONObject()
        o.append("role", .string(t.role))
        o.append("content", t.content.map { .string($0) } ?? .null)
        if !t.toolCalls.isEmpty {
            o.append("tool_calls", .array(t.toolCalls.map { c in
                // Templates print `arguments | tojson`: give them the object (as vLLM and transformers' docs do).
                let args = (try? HFJSON.parse(Data(c.arguments.utf8))) ?? .string(c.arguments)
                return .object(HFJSONObject([("id", .string(c.id)), ("type", .string("function")),
                                             ("function", .object(HFJSONObject([("name", .string(c.name)), ("arguments", args)])))]))
            }))
        }
        if let id = t.toolCallID { o.append("tool_call_id", .string(id)) }
        if let n = t.name { o.append("name", .string(n)) }
        return .object(o)
    }

    /// The generic rendering's plain messages (see `render(turns:tools:addGenerationPrompt:)`).
    public static func genericMessages(turns: [ChatTurn], tools: [ChatTool]) -> [ChatMessage] {
        var out: [ChatMessage] = []
        var pendingResults: [String] = []
        func flushResults() {
            guard !pendingResults.isEmpty else { return }
            out.append(ChatMessage(role: "user", content: pendingResults.map { "<tool_response>\n\($0)\n</tool_response>" }.joined(separator: "\n")))
            pendingResults = []
        }
        for t in turns {
            if t.role == "tool" { pendingResults.append(t.content ?? ""); continue }
            flushResults()
            var text = t.content ?? ""
            if t.role == "assistant", !t.toolCalls.isEmpty {
                let calls = t.toolCalls.map(ToolCallFormat.text).joined(separator: "\n")
                text = text.isEmpty ? calls : text + "\n" + calls
            }
            out.append(ChatMessage(role: t.role, content: text))
        }
        flushResults()
        if !tools.isEmpty {
            let section = ToolCallFormat.genericSystemSection(tools)
            if let first = out.first, first.role == "system" {
                out[0].content = first.content.isEmpty ? section : first.content + "\n\n" + section
            } else {
                out.insert(ChatMessage(role: "system", content: section), at: 0)
            }
        }
        return out
    }
}

extension ModelBundle {
    /// The prompt of a conversation with tools, tokenized (see `ChatTemplate.render(turns:tools:addGenerationPrompt:)`).
    /// `assistantPrefix` is text the assistant's answer starts with (e.g. `<tool_call>\n` to force a call); it is
    /// added after the generation prompt.
    public func chatPromptIDs(turns: [ChatTurn], tools: [ChatTool], assistantPrefix: String = "") throws -> [Int] {
        try renderChat { t, bos, eos in
            try t.render(turns: turns, tools: tools, addGenerationPrompt: true, bosToken: bos, eosToken: eos) + assistantPrefix
        }
    }
}

/// JSON text of an `HFJSON` value.
public enum ToolJSON {
    /// Python's `json.dumps(v, ensure_ascii=False)`: `", "` and `": "` separators, keys in order.
    public static func python(_ v: HFJSON) -> String { var s = ""; write(v, ", ", ": ", &s); return s }
    /// Compact: no spaces.
    public static func compact(_ v: HFJSON) -> String { var s = ""; write(v, ",", ":", &s); return s }

    static func write(_ v: HFJSON, _ item: String, _ key: String, _ out: inout String) {
        switch v {
        case .null: out += "null"
        case let .bool(b): out += b ? "true" : "false"
        case let .int(i): out += String(i)
        case let .double(d): out += d.isFinite ? (d == d.rounded() && abs(d) < 1e16 ? String(format: "%.1f", d) : "\(d)") : "null"
        case let .string(s): out += JSONText.quoted(s)
        case let .array(a):
            out += "["
            for (i, x) in a.enumerated() {
                if i > 0 { out += item }
                write(x, item, key, &out)
            }
            out += "]"
        case let .object(o):
            out += "{"
            for (i, (k, x)) in o.members.enumerated() {
                if i > 0 { out += item }
                out += JSONText.quoted(k) + key
                write(x, item, key, &out)
            }
            out += "}"
        }
    }
}

/// Splits a model's output into text and tool calls: each `<tool_call>` … `</tool_call>` block holding
/// `{"name": ..., "arguments": {...}}` (or `"parameters"`) is a call; text outside the blocks is content. Fed piece
/// by piece (streaming), it holds back only text that might be the start of `<tool_call>`; a block whose JSON does
/// not parse as a call is given back as text. A block still open at the end is a call if its JSON is complete.
///
/// With `names` given, a message that is *only* one JSON call, fenced (```` ```json\n{"name": ..., "arguments": {...}}\n``` ````,
/// any or no language tag) or bare (`{"name": ..., "arguments": {...}}`), whitespace around allowed, is a call too when
/// its name is among `names` and its arguments are an object (Qwen2.5-Coder answers so under `tool_choice: auto`).
/// While the output may still become such a message, nothing is given out; it is decided at the end (or as soon as
/// the output cannot be one any more: other text after the block, or a start that is neither a fence nor `{`).
public struct ToolCallParser {
    public enum Event: Equatable {
        case text(String)
        case call(name: String, arguments: String)
    }

    private var buffer = ""
    private var inside = false
    /// The output so far while it may still be a whole-message JSON call.
    private var whole = ""
    private var maybeWhole: Bool
    private var scanner = WholeMessageScanner()
    /// Names a call may have (empty: any).
    public let names: Set<String>

    /// - Parameter wholeMessageCalls: read a message that is only a (fenced) JSON call as a call; it takes effect only
    ///   with `names` given.
    public init(names: Set<String> = [], wholeMessageCalls: Bool = true) {
        self.names = names
        maybeWhole = wholeMessageCalls && !names.isEmpty
    }

    /// Feeds the next piece of output.
    public mutating func feed(_ piece: String) -> [Event] {
        if maybeWhole {
            whole += piece
            if scanner.feed(piece) { return [] }
            maybeWhole = false
            defer { whole = "" }
            return feedTags(whole)
        }
        return feedTags(piece)
    }

    private mutating func feedTags(_ piece: String) -> [Event] {
        buffer += piece
        var events: [Event] = []
        while true {
            if !inside {
                if let r = buffer.range(of: ToolCallFormat.open) {
                    let before = String(buffer[..<r.lowerBound])
                    if !before.isEmpty { events.append(.text(before)) }
                    buffer = String(buffer[r.upperBound...])
                    inside = true
                    continue
                }
                // Keep back the longest tail that may begin "<tool_call>".
                let keep = Self.partialPrefixLength(buffer, of: ToolCallFormat.open)
                let emit = String(buffer.dropLast(keep))
                if !emit.isEmpty { events.append(.text(emit)) }
                buffer = String(buffer.suffix(keep))
                return events
            }
            guard let r = buffer.range(of: ToolCallFormat.close) else { return events }
            let body = String(buffer[..<r.lowerBound])
            buffer = String(buffer[r.upperBound...])
            inside = false
            events.append(call(body) ?? .text(ToolCallFormat.open + body + ToolCallFormat.close))
        }
    }

    /// Ends the output: what is still held back.
    public mutating func finish() -> [Event] {
        var events: [Event] = []
        if maybeWhole {
            maybeWhole = false
            let w = whole
            whole = ""
            if let c = wholeMessageCall(w) { return [c] }
            events = feedTags(w)
        }
        defer { buffer = ""; inside = false }
        if inside { return events + [call(buffer) ?? .text(ToolCallFormat.open + buffer)] }
        return buffer.isEmpty ? events : events + [.text(buffer)]
    }

    /// Parses a whole output.
    public static func parse(_ text: String, names: Set<String> = [], wholeMessageCalls: Bool = true)
        -> (content: String, calls: [(name: String, arguments: String)]) {
        var p = ToolCallParser(names: names, wholeMessageCalls: wholeMessageCalls)
        var content = ""
        var calls: [(String, String)] = []
        for e in p.feed(text) + p.finish() {
            switch e {
            case let .text(s): content += s
            case let .call(n, a): calls.append((n, a))
            }
        }
        return (content, calls)
    }

    func call(_ body: String, argumentsMustBeObject: Bool = false) -> Event? {
        guard let j = try? HFJSON.parse(Data(body.utf8)), let o = j.objectValue,
              let name = o["name"]?.stringValue, names.isEmpty || names.contains(name) else { return nil }
        if argumentsMustBeObject {
            guard let a = o["arguments"] ?? o["parameters"], a.objectValue != nil else { return nil }
        }
        let args = o["arguments"] ?? o["parameters"] ?? .object(HFJSONObject())
        switch args {
        case .object: return .call(name: name, arguments: ToolJSON.compact(args))
        case let .string(s):
            // Arguments given as JSON text.
            guard let a = try? HFJSON.parse(Data(s.utf8)), a.objectValue != nil else { return nil }
            return .call(name: name, arguments: ToolJSON.compact(a))
        default: return nil
        }
    }

    // MARK: A whole message that is one JSON call

    /// The call a whole message is, if it is only a fenced or bare JSON call (see the type's comment).
    func wholeMessageCall(_ text: String) -> Event? {
        guard let body = Self.wholeMessageJSON(text) else { return nil }
        return call(body, argumentsMustBeObject: true)
    }

    /// The JSON text of a message that is only a fenced block or a bare object (whitespace around), else nil.
    static func wholeMessageJSON(_ text: String) -> String? {
        let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if t.hasPrefix("{") { return t }
        guard t.hasPrefix(fence), t.count >= 2 * fence.count, t.hasSuffix(fence) else { return nil }
        var inner = t.dropFirst(fence.count).dropLast(fence.count)
        // The info string (a language tag such as `json`) up to the first line break.
        let tag = inner.prefix { !$0.isNewline && !$0.isWhitespace && $0 != "{" }
        guard tag.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else { return nil }
        inner = inner.dropFirst(tag.count)
        let body = inner.trimmingCharacters(in: .whitespacesAndNewlines)
        return body.hasPrefix("{") ? body : nil
    }

    static let fence = "```"

    /// Reads a message character by character (in linear time over the whole stream) and says whether it may still
    /// grow into a message that is only a fenced or bare JSON object: leading whitespace, then either `{`…`}` and
    /// whitespace, or a fence of three backticks, an optional language tag, whitespace, `{`…`}`, whitespace, a closing
    /// fence and whitespace. Braces and brackets are counted outside JSON strings.
    struct WholeMessageScanner {
        enum Phase { case start, fence(Int), tag, beforeObject, object, afterBare, afterObject, closing(Int), afterFence, dead }
        var phase = Phase.start
        var bare = false
        var depth = 0
        var inString = false
        var escaped = false

        var possible: Bool { if case .dead = phase { return false } else { return true } }

        mutating func feed(_ s: String) -> Bool {
            for c in s.unicodeScalars {
                step(c)
                if case .dead = phase { return false }
            }
            return true
        }

        private static func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace }

        private mutating func open(_ isBare: Bool) { bare = isBare; depth = 1; inString = false; escaped = false; phase = .object }

        private mutating func step(_ c: Unicode.Scalar) {
            switch phase {
            case .dead: return
            case .start:
                if Self.isSpace(c) { return }
                if c == "{" { open(true) } else if c == "`" { phase = .fence(1) } else { phase = .dead }
            case let .fence(n):
                if n < 3 { phase = c == "`" ? .fence(n + 1) : .dead; return }
                phase = .tag
                step(c)
            case .tag:
                if c == "{" { open(false) } else if Self.isSpace(c) { phase = .beforeObject }
                else if !(c.isASCII && (c.properties.isAlphabetic || ("0"..."9").contains(c) || c == "-" || c == "_")) { phase = .dead }
            case .beforeObject:
                if c == "{" { open(false) } else if !Self.isSpace(c) { phase = .dead }
            case .object:
                if inString {
                    if escaped { escaped = false } else if c == "\\" { escaped = true } else if c == "\"" { inString = false }
                } else if c == "\"" {
                    inString = true
                } else if c == "{" || c == "[" {
                    depth += 1
                } else if c == "}" || c == "]" {
                    depth -= 1
                    if depth == 0 { phase = bare ? .afterBare : .afterObject }
                }
            case .afterBare, .afterFence:
                if !Self.isSpace(c) { phase = .dead }
            case .afterObject:
                if c == "`" { phase = .closing(1) } else if !Self.isSpace(c) { phase = .dead }
            case let .closing(n):
                if n < 3 { phase = c == "`" ? .closing(n + 1) : .dead } else { phase = Self.isSpace(c) ? .afterFence : .dead }
            }
        }
    }

    static func partialPrefixLength(_ s: String, of tag: String) -> Int {
        let t = Array(tag)
        let tail = Array(s.suffix(t.count - 1))
        for k in stride(from: min(tail.count, t.count - 1), to: 0, by: -1) where Array(tail.suffix(k)) == Array(t.prefix(k)) {
            return k
        }
        return 0
    }
}
