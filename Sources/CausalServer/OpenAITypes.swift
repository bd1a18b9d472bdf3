import CausalLM
import Foundation
import Hummingbird

/// An error answered with an OpenAI-style body: `{"error": {"message", "type", "param", "code"}}`.
public struct APIError: Error, CustomStringConvertible, Sendable {
    public var status: HTTPResponse.Status
    public var message: String
    public var type: String
    public var param: String?
    public var code: String?
    /// Seconds for a `Retry-After` header (429, 503).
    public var retryAfter: Int?

    public init(_ status: HTTPResponse.Status, _ message: String, type: String = "invalid_request_error",
                param: String? = nil, code: String? = nil, retryAfter: Int? = nil) {
        self.status = status; self.message = message; self.type = type; self.param = param; self.code = code
        self.retryAfter = retryAfter
    }

    public var description: String { "\(status.code) \(type)\(code.map { "/" + $0 } ?? ""): \(message)" }

    var json: JSONValue {
        .object([("error", .object([("message", .string(message)), ("type", .string(type)),
                                    ("param", .optional(param)), ("code", .optional(code))]))])
    }

    static func invalid(_ message: String, param: String? = nil, code: String? = "invalid_value") -> APIError {
        APIError(.badRequest, message, param: param, code: code)
    }

    static func unsupported(_ message: String, param: String) -> APIError {
        APIError(.badRequest, message, param: param, code: "unsupported_parameter")
    }
}

/// Which OpenAI endpoint a request came through.
enum Endpoint: String, Sendable {
    case chat = "/v1/chat/completions"
    case completion = "/v1/completions"
}

/// A completion request, validated and tokenized.
struct CompletionRequest: Sendable {
    var endpoint: Endpoint
    var model: String
    var promptIDs: [Int]
    var parameters: GenerateParameters
    var stream: Bool
    var includeUsage: Bool
    /// Every prompt of the request, one group of `n` choices each (chat: `[promptIDs]`); `promptIDs` is the first.
    var prompts: [[Int]] = []
    /// `max_tokens` as given (nil: each prompt may fill the context).
    var maxTokens: Int? = nil
    /// Choices returned per prompt, and sequences generated per prompt (`best_of`, completions; >= n).
    var n = 1
    var bestOf = 1
    /// Completions: the prompt's text (and, with `logprobs`, its tokens' log-probabilities) comes before the answer.
    var echo = false
    /// Whether the client asked for logprobs (`best_of` > n turns them on internally to rank the sequences).
    var wantsLogprobs = false
    /// Chat with tools: how calls are read from the output (Tools.swift); nil: plain text.
    var tools: ChatToolOptions? = nil
}

/// Reads the fields of a decoded JSON body, throwing a 400 that names the field for a missing or mistyped one.
/// JSON `null` counts as absent.
struct FieldReader {
    let object: [String: Any]

    func has(_ key: String) -> Bool { value(key) != nil }

    func value(_ key: String) -> Any? {
        guard let v = object[key], !(v is NSNull) else { return nil }
        return v
    }

    static func typeName(_ v: Any) -> String {
        if v is NSNull { return "null" }
        if isJSONBool(v) { return "a boolean" }
        if v is String { return "a string" }
        if v is NSNumber { return "a number" }
        if v is [Any] { return "an array" }
        if v is [String: Any] { return "an object" }
        return "\(type(of: v))"
    }

    static func wrongType(_ key: String, expected: String, got v: Any) -> APIError {
        .invalid("Invalid type for '\(key)': expected \(expected), but got \(typeName(v)).", param: key, code: "invalid_type")
    }

    func string(_ key: String) throws -> String? {
        guard let v = value(key) else { return nil }
        guard let s = v as? String, !isJSONBool(v) else { throw Self.wrongType(key, expected: "a string", got: v) }
        return s
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = value(key) else { return nil }
        guard isJSONBool(v), let b = v as? Bool else { throw Self.wrongType(key, expected: "a boolean", got: v) }
        return b
    }

    static func integer(_ v: Any, key: String) throws -> Int {
        guard !isJSONBool(v), !(v is String), let n = v as? NSNumber else { throw wrongType(key, expected: "an integer", got: v) }
        let d = n.doubleValue
        guard d.isFinite, d == d.rounded() else { throw wrongType(key, expected: "an integer", got: v) }
        guard abs(d) < 9.0e15 else { throw APIError.invalid("Invalid value for '\(key)': \(d) is too large.", param: key) }
        return n.intValue
    }

    func int(_ key: String, in range: ClosedRange<Int>? = nil) throws -> Int? {
        guard let v = value(key) else { return nil }
        let i = try Self.integer(v, key: key)
        if let r = range, !r.contains(i) {
            throw APIError.invalid("Invalid value for '\(key)': \(i) is outside the allowed range \(r.lowerBound)...\(r.upperBound).", param: key)
        }
        return i
    }

    func number(_ key: String, in range: ClosedRange<Double>? = nil, openLower: Bool = false) throws -> Double? {
        guard let v = value(key) else { return nil }
        guard !isJSONBool(v), !(v is String), let n = v as? NSNumber, n.doubleValue.isFinite else {
            throw Self.wrongType(key, expected: "a number", got: v)
        }
        let d = n.doubleValue
        if let r = range, !r.contains(d) || (openLower && d == r.lowerBound) {
            let lo = openLower ? "(" : "["
            throw APIError.invalid("Invalid value for '\(key)': \(d) must be in \(lo)\(r.lowerBound), \(r.upperBound)].", param: key)
        }
        return d
    }
}

/// Parses chat and completion bodies into `CompletionRequest`s.
struct RequestParser {
    let bundle: ModelBundle
    let modelID: String
    let acceptedModelNames: Set<String>
    let contextLength: Int
    /// What the server serves, for the error naming an unknown model ("'base' and the adapters 'a', 'b'").
    var served: String

    func parse(_ body: ByteBuffer, endpoint: Endpoint) throws -> CompletionRequest {
        let f = FieldReader(object: try Self.jsonObject(body))

        // model
        guard let model = try f.string("model") else {
            throw APIError.invalid("You must provide a model parameter.", param: "model", code: "missing_required_parameter")
        }
        guard acceptedModelNames.contains(model) else {
            throw APIError(.notFound, "The model '\(model)' does not exist. This server serves \(served).",
                           param: "model", code: "model_not_found")
        }

        // prompt
        let prompts: [[Int]]
        let promptParam: String
        var chat: ChatPrompt? = nil
        switch endpoint {
        case .chat:
            promptParam = "messages"
            chat = try parseChat(body, f)   // Tools.swift: messages, tools, tool_choice, response_format
            prompts = [chat!.ids]
        case .completion:
            promptParam = "prompt"
            prompts = try parsePrompts(f)
        }
        for (i, ids) in prompts.enumerated() where ids.isEmpty {
            throw APIError.invalid(prompts.count > 1 ? "Prompt \(i) is empty." : "The prompt is empty.", param: promptParam)
        }
        let promptIDs = prompts[0]

        // choices (n, best_of) and echo
        let choices = try parseChoices(f, endpoint: endpoint, prompts: prompts.count)
        let echo = endpoint == .completion ? (try f.bool("echo") ?? false) : false

        // length
        var maxTokens: Int? = nil
        for key in ["max_completion_tokens", "max_tokens"] where maxTokens == nil {
            if let m = try f.int(key) {
                // 0 scores (echo) without generating.
                guard m >= 1 || (m == 0 && echo) else {
                    throw APIError.invalid("Invalid value for '\(key)': \(m); it must be at least 1 (0 only with 'echo', to score the prompt).", param: key)
                }
                if m > contextLength {
                    throw APIError.invalid("Invalid value for '\(key)': \(m) is larger than the model's context of \(contextLength) tokens.",
                                           param: key, code: "context_length_exceeded")
                }
                maxTokens = m
            }
        }
        // An encoder-decoder model reads the prompt with its encoder (at most the context length); its decoder starts
        // from the decoder start id alone, so the completion may use the rest of the context.
        let encoderDecoder = bundle.isEncoderDecoder
        for promptIDs in prompts {
            if encoderDecoder && promptIDs.count > contextLength {
                throw APIError.invalid("This model's maximum input length is \(contextLength) tokens. However, your \(promptParam) resulted in \(promptIDs.count) tokens. Please reduce the length of the \(promptParam).",
                                       param: promptParam, code: "context_length_exceeded")
            }
            let P = encoderDecoder ? 1 : promptIDs.count
            if P >= contextLength {
                throw APIError.invalid("This model's maximum context length is \(contextLength) tokens. However, your \(promptParam) resulted in \(P) tokens. Please reduce the length of the \(promptParam).",
                                       param: promptParam, code: "context_length_exceeded")
            }
            if let m = maxTokens, P + m > contextLength {
                throw APIError.invalid("This model's maximum context length is \(contextLength) tokens. However, you requested \(P + m) tokens (\(P) in the \(encoderDecoder ? "decoder's start" : promptParam), \(m) in the completion). Please reduce the length of the \(promptParam) or completion.",
                                       param: f.has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens",
                                       code: "context_length_exceeded")
            }
        }
        let P = encoderDecoder ? 1 : promptIDs.count

        // sampling
        var p = GenerateParameters(maxNewTokens: maxTokens ?? (contextLength - P), temperature: 1)
        if let t = try f.number("temperature", in: 0...2) { p.temperature = Float(t) }
        if let t = try f.number("top_p", in: 0...1, openLower: true) { p.topP = Float(t) }
        if let k = try f.int("top_k", in: -1...Int(Int32.max)) { p.topK = max(k, 0) }
        if let m = try f.number("min_p", in: 0...1) { p.minP = Float(m) }
        if let r = try f.number("repetition_penalty", in: 0...100, openLower: true) { p.repetitionPenalty = Float(r) }
        try parsePenalties(f, into: &p)
        if let v = f.value("seed") {
            let s = try FieldReader.integer(v, key: "seed")
            p.seed = UInt64(bitPattern: Int64(s))
        }
        if let v = f.value("stop") {
            let stops: [String]
            if let s = v as? String { stops = [s] } else if let a = v as? [Any] {
                stops = try a.enumerated().map { i, x in
                    guard let s = x as? String else { throw FieldReader.wrongType("stop[\(i)]", expected: "a string", got: x) }
                    return s
                }
            } else {
                throw FieldReader.wrongType("stop", expected: "a string or an array of strings", got: v)
            }
            guard stops.count <= 16 else { throw APIError.invalid("Invalid value for 'stop': at most 16 stop sequences are allowed, got \(stops.count).", param: "stop") }
            guard !stops.contains("") else { throw APIError.invalid("Invalid value for 'stop': stop sequences must not be empty.", param: "stop") }
            p.stop = stops
        }
        if let ignore = try f.bool("ignore_eos") { p.stopAtEOS = !ignore }

        // logprobs
        switch endpoint {
        case .chat:
            p.logprobs = try f.bool("logprobs") ?? false
            if let k = try f.int("top_logprobs", in: 0...20) {
                guard p.logprobs else {
                    throw APIError.invalid("'top_logprobs' requires 'logprobs' to be true.", param: "top_logprobs")
                }
                p.topLogprobs = k
            }
        case .completion:
            if let k = try f.int("logprobs", in: 0...5) { p.logprobs = true; p.topLogprobs = k }
            if echo && p.logprobs {
                guard !encoderDecoder else {
                    throw APIError.unsupported("'echo' with 'logprobs' is not supported for an encoder-decoder model: its prompt is read by the encoder, not predicted.", param: "echo")
                }
                p.promptLogprobs = true
            }
            if f.has("suffix") { throw APIError.unsupported("'suffix' is not supported.", param: "suffix") }
        }

        // unsupported features that would silently change the meaning
        if endpoint == .completion {
            for key in ["tools", "tool_choice", "functions"] where f.has(key) {
                throw APIError.unsupported("'\(key)' is supported on /v1/chat/completions only.", param: key)
            }
        }
        switch endpoint {
        case .chat:
            p.constraint = chat?.constraint
            // At most one call under `tool_choice: auto`: the answer ends with the first call's closing tag (held
            // back from the text; the parser takes the open block as the call).
            if let t = chat?.tools, !t.parallel, t.choice == .auto { p.stop.append(ToolCallFormat.close) }
        case .completion:
            // Structured output on completions, as on chat (Tools.swift).
            if f.has("response_format") { p.constraint = try parseResponseFormat(f, try Self.orderedObject(body)) }
        }

        // streaming
        let stream = try f.bool("stream") ?? false
        var includeUsage = false
        if let so = f.value("stream_options") {
            guard let o = so as? [String: Any] else { throw FieldReader.wrongType("stream_options", expected: "an object", got: so) }
            guard stream else {
                throw APIError.invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.", param: "stream_options")
            }
            includeUsage = try FieldReader(object: o).bool("include_usage") ?? false
        }

        let wantsLogprobs = p.logprobs
        if choices.bestOf > choices.n {
            guard !stream else {
                throw APIError.invalid("'best_of' greater than 'n' cannot be used with 'stream': the best sequences are known only at the end.", param: "best_of")
            }
            p.logprobs = true   // to rank the sequences by their cumulative log-probability
        }
        do { try p.validate() } catch { throw APIError.invalid("Invalid sampling parameters: \(error)") }
        var r = CompletionRequest(endpoint: endpoint, model: model, promptIDs: promptIDs, parameters: p, stream: stream,
                                  includeUsage: includeUsage)
        r.prompts = prompts; r.maxTokens = maxTokens; r.n = choices.n; r.bestOf = choices.bestOf; r.echo = echo
        r.wantsLogprobs = wantsLogprobs
        r.tools = chat?.tools
        return r
    }

    /// The body parsed again keeping object keys in order (schemas list properties in the order they are generated).
    static func orderedObject(_ body: ByteBuffer) throws -> HFJSONObject {
        guard let o = try? HFJSON.parse(Data(body.readableBytesView)).objectValue else {
            throw APIError.invalid("We could not parse the JSON body of your request.", code: "invalid_json")
        }
        return o
    }

    /// The JSON object of a request body (400 for an empty body, invalid JSON or another JSON value).
    static func jsonObject(_ body: ByteBuffer) throws -> [String: Any] {
        let data = Data(body.readableBytesView)
        guard !data.isEmpty else {
            throw APIError.invalid("The request body is empty; expected a JSON object.", code: "invalid_json")
        }
        let any: Any
        do { any = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) } catch {
            throw APIError.invalid("We could not parse the JSON body of your request: it is not valid JSON (\(Self.describe(error))).",
                                   code: "invalid_json")
        }
        guard let obj = any as? [String: Any] else {
            throw APIError.invalid("The request body must be a JSON object, got \(FieldReader.typeName(any)).", code: "invalid_json")
        }
        return obj
    }

    static func describe(_ error: Error) -> String {
        let ns = error as NSError
        if let d = ns.userInfo[NSDebugDescriptionErrorKey] as? String { return d }
        return ns.localizedDescription
    }
}
