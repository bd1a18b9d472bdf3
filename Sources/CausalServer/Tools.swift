import CausalLM
import Foundation
import NIOCore

// Chat requests with tools (function calling) and structured output (`response_format`): the messages (with
// assistant `tool_calls` and `tool` results), `tools`, `tool_choice` and `response_format` parsed into a prompt and a
// token constraint; the model's output parsed back into `message.tool_calls` (whole or streamed). docs/server-api.md,
// "Tool calls" and "Structured output".

/// `tool_choice`.
enum ToolChoice: Equatable, Sendable {
    case none, auto, required
    case function(String)
}

/// The tools of a chat request and how its output is read.
struct ChatToolOptions: Sendable {
    var tools: [ChatTool]
    var choice: ToolChoice
    /// Text the answer is forced to start with (the opening of a call, for `required` and a named function); the output
    /// parsed for calls is this text followed by the generated text.
    var assistantPrefix: String
    /// Whether several calls may come in one answer. Under `auto`: `parallel_tool_calls` (default true; false: generation
    /// stops at the first call's closing tag). Forced (`required`, named): true only for `required` with
    /// `parallel_tool_calls: true` given explicitly (the grammar then allows one or more calls); else exactly one call.
    var parallel = true

    var names: Set<String> { Set(tools.map(\.name)) }
    /// The answer is forced to be calls (`required` or a named function): it holds no text of its own, so content is
    /// always null and an unfinished last call (cut by `max_tokens`) is dropped rather than shown as text.
    var forced: Bool { !assistantPrefix.isEmpty }
}

/// A parsed chat request's prompt, tool options (nil: no tool calls are read from the output) and constraint.
struct ChatPrompt: Sendable {
    var ids: [Int]
    var tools: ChatToolOptions?
    var constraint: (any TokenConstraint)?
}

/// Compiled constraints, shared by requests with the same schema (compiling and the masks' caches are per constraint).
final class ConstraintCache: @unchecked Sendable {
    static let shared = ConstraintCache()
    private let lock = NSLock()
    private var entries: [String: any TokenConstraint] = [:]
    private var order: [String] = []
    let capacity = 32

    func get(_ key: String, make: () throws -> any TokenConstraint) throws -> any TokenConstraint {
        lock.lock()
        if let c = entries[key] { lock.unlock(); return c }
        lock.unlock()
        let c = try make()
        lock.lock(); defer { lock.unlock() }
        if entries[key] == nil {
            entries[key] = c
            order.append(key)
            if order.count > capacity { entries[order.removeFirst()] = nil }
        }
        return entries[key]!
    }
}

extension RequestParser {
    /// At most this many tools in one request.
    static let maxTools = 128

    /// The chat part of a request: messages, tools, tool_choice and response_format, rendered and tokenized.
    func parseChat(_ body: ByteBuffer, _ f: FieldReader) throws -> ChatPrompt {
        let turns = try parseTurns(f)
        guard bundle.chatTemplate != nil else {
            throw APIError.invalid("The model '\(modelID)' has no chat template, so 'messages' cannot be turned into its input\(bundle.isEncoderDecoder ? " (it is an encoder-decoder model)" : ""). Use POST /v1/completions with 'prompt' instead.",
                                   param: "messages", code: "chat_template_missing")
        }
        if f.has("functions") || f.has("function_call") {
            throw APIError.unsupported("'functions' and 'function_call' (the deprecated form) are not supported; use 'tools' and 'tool_choice'.",
                                       param: f.has("functions") ? "functions" : "function_call")
        }
        // The body again, keeping object keys in order: schemas list properties in the order they are generated, and
        // templates print the tools as given.
        let ordered = f.has("tools") || f.has("response_format") ? try Self.orderedObject(body) : HFJSONObject()
        let tools = try parseTools(f, ordered)
        let choice = try parseToolChoice(f, tools: tools)
        let parallelGiven = try f.bool("parallel_tool_calls")
        var constraint = try parseResponseFormat(f, ordered)
        let tokenizer = try bundle.tokenizer

        var options: ChatToolOptions? = nil
        var offered: [ChatTool] = []
        if !tools.isEmpty && choice != .none {
            var o = ChatToolOptions(tools: tools, choice: choice, assistantPrefix: "", parallel: parallelGiven ?? true)
            offered = tools
            switch choice {
            case .required, .function:
                if constraint != nil {
                    throw APIError.invalid("'response_format' of type json_object or json_schema cannot be combined with a 'tool_choice' that forces a call.",
                                           param: "response_format")
                }
                let forced: [(Int, ChatTool)]
                if case let .function(name) = choice {
                    forced = tools.enumerated().filter { $0.element.name == name }
                } else {
                    forced = Array(tools.enumerated())
                }
                let schema = ToolCallFormat.callSchema(forced.map(\.1))
                // A named function: exactly one call (as vLLM does). `required`: one call unless the request asks for
                // parallel calls explicitly; small models rarely end after a closing tag when another block is allowed.
                let parallel = choice == .required && parallelGiven == true
                o.parallel = parallel
                do {
                    constraint = try ConstraintCache.shared.get("\(ObjectIdentifier(bundle))|call|\(parallel)|\(schema)") {
                        try GrammarConstraint(grammar: ToolCallFormat.callGrammar(forced.map(\.1), parallel: parallel), tokenizer: tokenizer)
                    }
                } catch {
                    // Name the tool whose parameters failed (the schema path says where).
                    let which = forced.count == 1 ? "tools[\(forced[0].0)].function.parameters" : "tools"
                    throw APIError.invalid("Invalid schema for function calling (\(which)): \(Self.reason(error))", param: which,
                                           code: "invalid_schema")
                }
                o.assistantPrefix = ToolCallFormat.open + "\n"
            default:
                if constraint != nil {
                    throw APIError.invalid("'response_format' of type json_object or json_schema cannot be combined with 'tools' unless 'tool_choice' is 'none'.",
                                           param: "response_format")
                }
            }
            options = o
        }
        let ids: [Int]
        do {
            ids = try bundle.chatPromptIDs(turns: turns, tools: offered, assistantPrefix: options?.assistantPrefix ?? "")
        } catch {
            throw APIError.invalid("The messages could not be rendered with the model's chat template: \(error)", param: "messages")
        }
        return ChatPrompt(ids: ids, tools: options, constraint: constraint)
    }

    static func reason(_ error: Error) -> String {
        if case let CausalError.invalidArgument(m)? = error as? CausalError { return m }
        return "\(error)"
    }

    /// `messages`: system/developer, user, assistant (text and/or `tool_calls`) and tool (`tool_call_id`, content).
    func parseTurns(_ f: FieldReader) throws -> [ChatTurn] {
        guard let v = f.value("messages") else {
            throw APIError.invalid("Missing required parameter: 'messages'.", param: "messages", code: "missing_required_parameter")
        }
        guard let array = v as? [Any] else { throw FieldReader.wrongType("messages", expected: "an array", got: v) }
        guard !array.isEmpty else {
            throw APIError.invalid("Invalid 'messages': empty array. Expected an array with minimum length 1.", param: "messages",
                                   code: "empty_array")
        }
        let roles: Set<String> = ["system", "developer", "user", "assistant", "tool"]
        return try array.enumerated().map { i, m in
            let name = "messages[\(i)]"
            guard let o = m as? [String: Any] else { throw FieldReader.wrongType(name, expected: "an object", got: m) }
            let mf = FieldReader(object: o)
            guard let roleValue = mf.value("role") else {
                throw APIError.invalid("Missing required parameter: '\(name).role'.", param: "\(name).role", code: "missing_required_parameter")
            }
            guard let role = roleValue as? String, !isJSONBool(roleValue) else {
                throw FieldReader.wrongType("\(name).role", expected: "a string", got: roleValue)
            }
            guard roles.contains(role) else {
                throw APIError.invalid("Invalid value for '\(name).role': '\(role)'. Supported values are: 'system', 'developer', 'user', 'assistant' and 'tool'.",
                                       param: "\(name).role")
            }
            let calls = role == "assistant" ? try parseToolCalls(mf, name: name) : []
            let content: String?
            switch mf.value("content") {
            case nil:
                guard role == "assistant" else {
                    throw APIError.invalid("Missing required parameter: '\(name).content'.", param: "\(name).content",
                                           code: "missing_required_parameter")
                }
                content = calls.isEmpty ? "" : nil
            case let s as String where !isJSONBool(s):
                content = s
            case let parts as [Any]:
                content = try parts.enumerated().map { j, part -> String in
                    let pn = "\(name).content[\(j)]"
                    guard let po = part as? [String: Any] else { throw FieldReader.wrongType(pn, expected: "an object", got: part) }
                    let pf = FieldReader(object: po)
                    let type = try pf.string("type")
                    guard type == "text" else {
                        throw APIError.unsupported("Invalid value for '\(pn).type': only 'text' content parts are supported, got '\(type ?? "null")'.",
                                                   param: "\(pn).type")
                    }
                    guard let text = try pf.string("text") else {
                        throw APIError.invalid("Missing required parameter: '\(pn).text'.", param: "\(pn).text", code: "missing_required_parameter")
                    }
                    return text
                }.joined()
            case let other?:
                throw FieldReader.wrongType("\(name).content", expected: "a string or an array of content parts", got: other)
            }
            var toolCallID: String? = nil
            if role == "tool" {
                guard let id = try mf.string("tool_call_id") else {
                    throw APIError.invalid("Missing required parameter: '\(name).tool_call_id'.", param: "\(name).tool_call_id",
                                           code: "missing_required_parameter")
                }
                toolCallID = id
            }
            let who = try mf.string("name")
            return ChatTurn(role: role == "developer" ? "system" : role, content: content, toolCalls: calls,
                            toolCallID: toolCallID, name: who)
        }
    }

    /// An assistant message's `tool_calls`: `[{id, type: "function", function: {name, arguments}}]`.
    func parseToolCalls(_ mf: FieldReader, name: String) throws -> [ChatToolCall] {
        guard let v = mf.value("tool_calls") else { return [] }
        guard let a = v as? [Any] else { throw FieldReader.wrongType("\(name).tool_calls", expected: "an array", got: v) }
        return try a.enumerated().map { j, c in
            let cn = "\(name).tool_calls[\(j)]"
            guard let co = c as? [String: Any] else { throw FieldReader.wrongType(cn, expected: "an object", got: c) }
            let cf = FieldReader(object: co)
            if let t = try cf.string("type"), t != "function" {
                throw APIError.invalid("Invalid value for '\(cn).type': only 'function' is supported, got '\(t)'.", param: "\(cn).type")
            }
            guard let fv = cf.value("function") else {
                throw APIError.invalid("Missing required parameter: '\(cn).function'.", param: "\(cn).function", code: "missing_required_parameter")
            }
            guard let fo = fv as? [String: Any] else { throw FieldReader.wrongType("\(cn).function", expected: "an object", got: fv) }
            let ff = FieldReader(object: fo)
            guard let fname = try ff.string("name") else {
                throw APIError.invalid("Missing required parameter: '\(cn).function.name'.", param: "\(cn).function.name",
                                       code: "missing_required_parameter")
            }
            let args = try ff.string("arguments") ?? "{}"
            return ChatToolCall(id: try cf.string("id") ?? "call_\(j)", name: fname, arguments: args)
        }
    }

    /// `tools`: function tools, each with a name and optionally a description and a parameters schema.
    func parseTools(_ f: FieldReader, _ ordered: HFJSONObject) throws -> [ChatTool] {
        guard let v = f.value("tools") else { return [] }
        guard v is [Any], let a = ordered["tools"]?.arrayValue else { throw FieldReader.wrongType("tools", expected: "an array", got: v) }
        guard a.count <= Self.maxTools else {
            throw APIError.invalid("Invalid value for 'tools': at most \(Self.maxTools) tools are supported, got \(a.count).", param: "tools")
        }
        var seen = Set<String>()
        return try a.enumerated().map { i, t in
            let tool: ChatTool
            do { tool = try ChatTool(json: t) } catch {
                throw APIError.invalid("Invalid value for 'tools[\(i)]': \(Self.reason(error))", param: "tools[\(i)]")
            }
            guard seen.insert(tool.name).inserted else {
                throw APIError.invalid("Invalid value for 'tools[\(i)].function.name': '\(tool.name)' is given twice.", param: "tools[\(i)].function.name")
            }
            return tool
        }
    }

    /// `tool_choice`: "none", "auto" (the default with tools), "required", or `{"type": "function", "function": {"name": ...}}`.
    func parseToolChoice(_ f: FieldReader, tools: [ChatTool]) throws -> ToolChoice {
        guard let v = f.value("tool_choice") else { return .auto }
        let choice: ToolChoice
        if let s = v as? String, !isJSONBool(v) {
            switch s {
            case "none": choice = .none
            case "auto": choice = .auto
            case "required": choice = .required
            default:
                throw APIError.invalid("Invalid value for 'tool_choice': '\(s)'. Supported values are: 'none', 'auto', 'required' or an object naming a function.",
                                       param: "tool_choice")
            }
        } else if let o = v as? [String: Any] {
            let of = FieldReader(object: o)
            if let t = try of.string("type"), t != "function" {
                throw APIError.invalid("Invalid value for 'tool_choice.type': only 'function' is supported, got '\(t)'.", param: "tool_choice.type")
            }
            guard let fv = of.value("function") as? [String: Any], let name = try FieldReader(object: fv).string("name") else {
                throw APIError.invalid("Missing required parameter: 'tool_choice.function.name'.", param: "tool_choice.function.name",
                                       code: "missing_required_parameter")
            }
            guard tools.contains(where: { $0.name == name }) else {
                throw APIError.invalid("Invalid value for 'tool_choice': the function '\(name)' is not among 'tools'.", param: "tool_choice")
            }
            choice = .function(name)
        } else {
            throw FieldReader.wrongType("tool_choice", expected: "a string or an object", got: v)
        }
        if tools.isEmpty, choice != .none, choice != .auto {
            throw APIError.invalid("Invalid value for 'tool_choice': it requires 'tools'.", param: "tool_choice")
        }
        return choice
    }

    /// `response_format`: text (nil), `json_object` (any JSON object) or `json_schema` (`{name, schema, strict}`).
    func parseResponseFormat(_ f: FieldReader, _ ordered: HFJSONObject) throws -> (any TokenConstraint)? {
        guard let v = f.value("response_format") else { return nil }
        guard let o = v as? [String: Any] else { throw FieldReader.wrongType("response_format", expected: "an object", got: v) }
        let type = try FieldReader(object: o).string("type")
        let tokenizer = try bundle.tokenizer
        switch type {
        case nil:
            throw APIError.invalid("Missing required parameter: 'response_format.type'.", param: "response_format.type",
                                   code: "missing_required_parameter")
        case "text"?:
            return nil
        case "json_object"?:
            return try ConstraintCache.shared.get("\(ObjectIdentifier(bundle))|object") { try GrammarConstraint.jsonObject(tokenizer: tokenizer) }
        case "json_schema"?:
            guard let js = ordered["response_format"]?["json_schema"], !js.isNull else {
                throw APIError.invalid("Missing required parameter: 'response_format.json_schema'.", param: "response_format.json_schema",
                                       code: "missing_required_parameter")
            }
            guard js.objectValue != nil else {
                throw APIError.invalid("Invalid type for 'response_format.json_schema': expected an object, but got \(js.typeName).",
                                       param: "response_format.json_schema", code: "invalid_type")
            }
            if let s = js["strict"], !s.isNull, s.boolValue == nil {
                throw APIError.invalid("Invalid type for 'response_format.json_schema.strict': expected a boolean, but got \(s.typeName).",
                                       param: "response_format.json_schema.strict", code: "invalid_type")
            }
            guard let schema = js["schema"], !schema.isNull else {
                throw APIError.invalid("Missing required parameter: 'response_format.json_schema.schema'.",
                                       param: "response_format.json_schema.schema", code: "missing_required_parameter")
            }
            let text = ToolJSON.compact(schema)
            do {
                return try ConstraintCache.shared.get("\(ObjectIdentifier(bundle))|schema|\(text)") {
                    try GrammarConstraint.jsonSchema(text, tokenizer: tokenizer)
                }
            } catch {
                throw APIError.invalid("Invalid schema for response_format: \(Self.reason(error))", param: "response_format.json_schema.schema",
                                       code: "invalid_schema")
            }
        case let t?:
            throw APIError.invalid("Invalid value for 'response_format.type': '\(t)'. Supported values are: 'text', 'json_object' and 'json_schema'.",
                                   param: "response_format.type")
        }
    }
}

// MARK: - Responses

extension ResponseBuilder {
    /// The chat `message` of a finished sequence and its finish reason: with tools, calls in the output become
    /// `tool_calls` (content null when nothing else was said) and the reason `tool_calls`.
    func chatMessage(_ r: GenerationResult) -> (message: JSONValue, finishReason: String) {
        let reason = Self.finishReason(r.finishReason)
        guard let tools else {
            return (.object([("role", .string("assistant")), ("content", .string(r.text)), ("refusal", .null)]), reason)
        }
        let parsed = ToolCallParser.parse(tools.assistantPrefix + r.text, names: tools.names)
        if tools.forced {
            // Only calls were allowed: what is not a complete call is an unfinished last call cut by max_tokens.
            var fields: [(String, JSONValue)] = [("role", .string("assistant")), ("content", .null), ("refusal", .null)]
            if !parsed.calls.isEmpty {
                fields.append(("tool_calls", .array(parsed.calls.map { Self.toolCall(name: $0.name, arguments: $0.arguments, index: nil) })))
            }
            return (.object(fields), !parsed.calls.isEmpty && r.finishReason == .stop ? "tool_calls" : reason)
        }
        guard !parsed.calls.isEmpty else {
            return (.object([("role", .string("assistant")), ("content", .string(parsed.content)), ("refusal", .null)]), reason)
        }
        let content = parsed.content.trimmingCharacters(in: .whitespacesAndNewlines)
        let calls = parsed.calls.map { Self.toolCall(name: $0.name, arguments: $0.arguments, index: nil) }
        return (.object([("role", .string("assistant")), ("content", content.isEmpty ? .null : .string(content)), ("refusal", .null),
                         ("tool_calls", .array(calls))]),
                r.finishReason == .stop ? "tool_calls" : reason)
    }

    static func toolCall(name: String, arguments: String, index: Int?) -> JSONValue {
        var fields: [(String, JSONValue)] = []
        if let index { fields.append(("index", .int(index))) }
        fields += [("id", .string("call_" + randomID())), ("type", .string("function")),
                   ("function", .object([("name", .string(name)), ("arguments", .string(arguments))]))]
        return .object(fields)
    }
}

/// A chat stream with tools: text deltas pass through a `ToolCallParser`; text goes out as `delta.content`, each
/// complete call as one `delta.tool_calls` chunk (`index`, `id`, `type`, `function.name`, the whole
/// `function.arguments`), and the last chunk's finish reason becomes `tool_calls` when calls were made.
final class ToolCallStream {
    let builder: ResponseBuilder
    let usageNull: Bool
    /// A forced answer (`ChatToolOptions.forced`): no text is sent, only calls.
    let forced: Bool
    private var parser: ToolCallParser
    private var calls = 0
    private var pendingText = ""

    init(builder: ResponseBuilder, options: ChatToolOptions, usageNull: Bool) {
        self.builder = builder
        self.usageNull = usageNull
        forced = options.forced
        parser = ToolCallParser(names: options.names)
        // The forced opening of a call is held back by the parser until the call is complete: no chunk comes of it.
        _ = parser.feed(options.assistantPrefix)
    }

    /// The chunks for the next text delta.
    func feed(_ delta: String) -> [JSONValue] { chunks(parser.feed(delta)) }

    /// The chunks that end the stream, `last` (the builder's final chunk) included, with its finish reason
    /// `tool_calls` when calls were made and the sequence stopped by itself.
    func finish(_ last: JSONValue, _ reason: FinishReason) -> [JSONValue] {
        var out = chunks(parser.finish())
        if !pendingText.isEmpty && calls == 0 && !forced { out.append(builder.chunk(text: pendingText, withUsageNull: usageNull)) }
        pendingText = ""
        out.append(calls > 0 && reason == .stop ? Self.withFinishReason(last, "tool_calls") : last)
        return out
    }

    private func chunks(_ events: [ToolCallParser.Event]) -> [JSONValue] {
        var out: [JSONValue] = []
        for e in events {
            switch e {
            case .text where forced:
                continue   // between calls, or an unfinished last call
            case let .text(s):
                // Whitespace next to a call is held back: content is only what the model said besides its calls.
                if s.allSatisfy(\.isWhitespace) { pendingText += s; continue }
                out.append(builder.chunk(text: pendingText + s, withUsageNull: usageNull))
                pendingText = ""
            case let .call(name, arguments):
                pendingText = ""
                let call = ResponseBuilder.toolCall(name: name, arguments: arguments, index: calls)
                calls += 1
                out.append(Self.withDelta(builder.chunk(text: nil, withUsageNull: usageNull), ("tool_calls", .array([call]))))
            }
        }
        return out
    }

    /// `chunk` with `field` added to its first choice's delta.
    static func withDelta(_ chunk: JSONValue, _ field: (String, JSONValue)) -> JSONValue {
        mapFirstChoice(chunk) { c in
            c.map { k, v in
                if k == "delta", case let .object(d) = v { return (k, .object(d + [field])) }
                return (k, v)
            }
        }
    }

    static func withFinishReason(_ chunk: JSONValue, _ reason: String) -> JSONValue {
        mapFirstChoice(chunk) { c in c.map { k, v in k == "finish_reason" ? (k, .string(reason)) : (k, v) } }
    }

    static func mapFirstChoice(_ chunk: JSONValue, _ f: ([(String, JSONValue)]) -> [(String, JSONValue)]) -> JSONValue {
        guard case let .object(fields) = chunk else { return chunk }
        return .object(fields.map { k, v in
            guard k == "choices", case let .array(cs) = v, case let .object(c)? = cs.first else { return (k, v) }
            return (k, .array([.object(f(c))] + cs.dropFirst()))
        })
    }
}
