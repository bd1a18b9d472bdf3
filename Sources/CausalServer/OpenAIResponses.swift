import CausalLM
import Foundation

/// Builds OpenAI response objects (and streaming chunks) for one completion.
struct ResponseBuilder {
    let endpoint: Endpoint
    let id: String
    let created: Int
    let model: String
    let tokenizer: any TextTokenizer
    /// Chat with tools: calls in the output become `tool_calls` (Tools.swift).
    var tools: ChatToolOptions? = nil

    init(endpoint: Endpoint, model: String, tokenizer: any TextTokenizer) {
        self.endpoint = endpoint
        self.model = model
        self.tokenizer = tokenizer
        id = (endpoint == .chat ? "chatcmpl-" : "cmpl-") + randomID()
        created = Int(Date().timeIntervalSince1970)
    }

    var object: String { endpoint == .chat ? "chat.completion" : "text_completion" }
    var chunkObject: String { endpoint == .chat ? "chat.completion.chunk" : "text_completion" }

    static func finishReason(_ r: FinishReason) -> String {
        switch r {
        case .stop: return "stop"
        case .length: return "length"
        case .cancelled: return "cancelled"
        }
    }

    static func usage(prompt: Int, completion: Int) -> JSONValue {
        .object([("prompt_tokens", .int(prompt)), ("completion_tokens", .int(completion)),
                 ("total_tokens", .int(prompt + completion))])
    }

    private func header(_ object: String) -> [(String, JSONValue)] {
        [("id", .string(id)), ("object", .string(object)), ("created", .int(created)), ("model", .string(model))]
    }

    /// The whole (non-streaming) response.
    func full(_ r: GenerationResult) -> JSONValue {
        let choice: JSONValue
        let lp = r.logprobs.map { logprobs($0) } ?? .null
        switch endpoint {
        case .chat:
            let (message, finish) = chatMessage(r)   // Tools.swift: content, or tool_calls
            choice = .object([("index", .int(0)), ("message", message), ("logprobs", lp), ("finish_reason", .string(finish))])
        case .completion:
            choice = .object([("text", .string(r.text)), ("index", .int(0)), ("logprobs", lp),
                              ("finish_reason", .string(Self.finishReason(r.finishReason)))])
        }
        return .object(header(object) + [("choices", .array([choice])),
                                         ("usage", Self.usage(prompt: r.promptTokens, completion: r.tokens.count)),
                                         ("system_fingerprint", .null)])
    }

    /// A streaming chunk: the first (role), a text delta, or the last (finish reason, logprobs).
    /// `textOffset`: where the chunk's first token starts in the completion's text (completions' `text_offset`).
    func chunk(text: String?, role: Bool = false, finish: FinishReason? = nil, logprobs lps: [TokenLogprob]? = nil,
               textOffset: Int = 0, withUsageNull: Bool) -> JSONValue {
        let lp = lps.map { logprobs($0, textOffset: textOffset) } ?? .null
        let fr: JSONValue = finish.map { .string(Self.finishReason($0)) } ?? .null
        let choice: JSONValue
        switch endpoint {
        case .chat:
            var delta: [(String, JSONValue)] = []
            if role { delta.append(("role", .string("assistant"))) }
            if let text { delta.append(("content", .string(text))) }
            choice = .object([("index", .int(0)), ("delta", .object(delta)), ("logprobs", lp), ("finish_reason", fr)])
        case .completion:
            choice = .object([("text", .string(text ?? "")), ("index", .int(0)), ("logprobs", lp), ("finish_reason", fr)])
        }
        var fields = header(chunkObject) + [("choices", .array([choice])), ("system_fingerprint", .null)]
        if withUsageNull { fields.append(("usage", .null)) }
        return .object(fields)
    }

    /// The usage chunk sent last when `stream_options.include_usage` is set.
    func usageChunk(prompt: Int, completion: Int) -> JSONValue {
        .object(header(chunkObject) + [("choices", .array([])), ("system_fingerprint", .null),
                                       ("usage", Self.usage(prompt: prompt, completion: completion))])
    }

    /// Characters the tokens' texts take (how completions' `text_offset` advances).
    func textLength(_ lps: [TokenLogprob]) -> Int { lps.reduce(0) { $0 + tokenizer.tokenText($1.id).count } }

    func logprobs(_ lps: [TokenLogprob], textOffset: Int = 0) -> JSONValue {
        switch endpoint {
        case .chat:
            func entry(_ id: Int, _ lp: Float) -> [(String, JSONValue)] {
                let bytes = tokenizer.tokenBytes(id)
                return [("token", .string(String(decoding: bytes, as: UTF8.self))), ("logprob", .float(lp)),
                        ("bytes", .array(bytes.map { .int(Int($0)) }))]
            }
            let content = lps.map { t in
                JSONValue.object(entry(t.id, t.logprob) + [("top_logprobs", .array(t.top.map { .object(entry($0.id, $0.logprob)) }))])
            }
            return .object([("content", .array(content)), ("refusal", .null)])
        case .completion:
            var offset = textOffset
            var tokens: [JSONValue] = [], values: [JSONValue] = [], tops: [JSONValue] = [], offsets: [JSONValue] = []
            for t in lps {
                let s = tokenizer.tokenText(t.id)
                tokens.append(.string(s))
                values.append(.float(t.logprob))
                tops.append(.object(t.top.map { (tokenizer.tokenText($0.id), .float($0.logprob)) }))
                offsets.append(.int(offset))
                offset += s.count
            }
            return .object([("tokens", .array(tokens)), ("token_logprobs", .array(values)), ("top_logprobs", .array(tops)),
                             ("text_offset", .array(offsets))])
        }
    }
}

func randomID() -> String {
    let chars = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    return String((0..<24).map { _ in chars.randomElement()! })
}

/// One server-sent event carrying a JSON object.
func sseEvent(_ json: JSONValue) -> String { "data: " + json.serialized() + "\n\n" }
let sseDone = "data: [DONE]\n\n"
