import CausalLM
import Foundation
import Hummingbird
import NIOCore

// Several choices per request: a list of prompts (completions), `n` > 1, `best_of`, and `echo` (the prompt, and with
// `logprobs` its scored tokens, before the answer). Requests with one prompt, one choice and no echo keep the
// single-sequence path in Server.swift.

extension RequestParser {
    /// At most this many sequences (prompts × best_of) in one request.
    static let maxSequencesPerRequest = 256

    /// `prompt` as a string, an array of strings, an array of token ids, or an array of token-id arrays.
    func parsePrompts(_ f: FieldReader) throws -> [[Int]] {
        guard let v = f.value("prompt") else {
            throw APIError.invalid("Missing required parameter: 'prompt'.", param: "prompt", code: "missing_required_parameter")
        }
        let V = bundle.model.vocabularySize
        func ids(_ a: [Any], name: String) throws -> [Int] {
            try a.enumerated().map { i, x in
                let id = try FieldReader.integer(x, key: "\(name)[\(i)]")
                guard id >= 0 && id < V else {
                    throw APIError.invalid("Invalid value for '\(name)[\(i)]': token id \(id) is outside the vocabulary (0..<\(V)).", param: "prompt")
                }
                return id
            }
        }
        func encode(_ s: String, name: String) throws -> [Int] {
            do { return try bundle.tokenizer.encode(s) } catch {
                throw APIError.invalid("Invalid value for '\(name)': it could not be tokenized: \(error)", param: "prompt")
            }
        }
        if let s = v as? String, !isJSONBool(v) { return [try encode(s, name: "prompt")] }
        guard let a = v as? [Any] else {
            throw FieldReader.wrongType("prompt", expected: "a string, an array of strings, an array of token ids or an array of token-id arrays", got: v)
        }
        guard !a.isEmpty else { throw APIError.invalid("The prompt is empty.", param: "prompt") }
        guard a.count <= Self.maxSequencesPerRequest else {
            throw APIError.invalid("Invalid value for 'prompt': at most \(Self.maxSequencesPerRequest) prompts per request, got \(a.count).", param: "prompt")
        }
        // All strings, all token-id arrays, or all token ids.
        func kind(_ x: Any) -> Int { x is String && !isJSONBool(x) ? 0 : (x is [Any] ? 1 : 2) }
        if let bad = a.indices.first(where: { kind(a[$0]) != kind(a[0]) }) {
            let expected = ["a string like prompt[0]", "a token-id array like prompt[0]", "a token id like prompt[0]"][kind(a[0])]
            throw FieldReader.wrongType("prompt[\(bad)]", expected: expected, got: a[bad])
        }
        if kind(a[0]) == 0 { return try a.enumerated().map { i, s in try encode(s as! String, name: "prompt[\(i)]") } }
        if kind(a[0]) == 1 { return try a.enumerated().map { i, x in try ids(x as! [Any], name: "prompt[\(i)]") } }
        return [try ids(a, name: "prompt")]
    }

    /// `n` (choices per prompt) and, on completions, `best_of` (sequences generated per prompt, the `n` with the
    /// highest cumulative log-probability returned).
    func parseChoices(_ f: FieldReader, endpoint: Endpoint, prompts: Int) throws -> (n: Int, bestOf: Int) {
        let limit = Self.maxSequencesPerRequest
        let n = try f.int("n", in: 1...limit) ?? 1
        var bestOf = n
        if endpoint == .completion, let b = try f.int("best_of", in: 1...limit) {
            guard b >= n else {
                throw APIError.invalid("Invalid value for 'best_of': \(b); it must be at least 'n' (\(n)).", param: "best_of")
            }
            bestOf = b
        }
        guard prompts * bestOf <= limit else {
            throw APIError.invalid("This request asks for \(prompts * bestOf) sequences (\(prompts) prompt(s) × \(bestOf)); at most \(limit) are allowed.",
                                   param: bestOf > n ? "best_of" : "n")
        }
        return (n, bestOf)
    }

    /// `presence_penalty`, `frequency_penalty` (OpenAI's, over the generated tokens) and `logit_bias`.
    func parsePenalties(_ f: FieldReader, into p: inout GenerateParameters) throws {
        if let v = try f.number("presence_penalty", in: -2...2) { p.presencePenalty = Float(v) }
        if let v = try f.number("frequency_penalty", in: -2...2) { p.frequencyPenalty = Float(v) }
        if let lb = f.value("logit_bias") {
            guard let o = lb as? [String: Any] else { throw FieldReader.wrongType("logit_bias", expected: "an object", got: lb) }
            guard o.count <= 1024 else {
                throw APIError.invalid("Invalid value for 'logit_bias': at most 1024 tokens may be biased, got \(o.count).", param: "logit_bias")
            }
            let V = bundle.model.vocabularySize
            var bias: [Int: Float] = [:]
            for (key, value) in o {
                guard let id = Int(key), id >= 0, id < V else {
                    throw APIError.invalid("Invalid key in 'logit_bias': '\(key)' is not a token id of this model (0..<\(V)).", param: "logit_bias")
                }
                let name = "logit_bias.\(key)"
                guard !isJSONBool(value), !(value is String), let num = value as? NSNumber, num.doubleValue.isFinite else {
                    throw FieldReader.wrongType(name, expected: "a number", got: value)
                }
                let b = num.doubleValue
                guard abs(b) <= 100 else {
                    throw APIError.invalid("Invalid value for '\(name)': \(b) must be in [-100, 100].", param: "logit_bias")
                }
                bias[id] = Float(b)
            }
            p.logitBias = bias
        }
    }
}

extension OpenAIService {
    /// One scheduler request per prompt; each runs `bestOf` choices (`Scheduler.submit(_:n:)`: the prompt is
    /// prefilled once and its cache copied, choice j seeded with `seed + j`).
    func promptRequests(_ req: CompletionRequest) -> [SequenceRequest] {
        req.prompts.map { ids in
            let P = bundle.isEncoderDecoder ? 1 : ids.count
            var p = req.parameters
            p.maxNewTokens = req.maxTokens ?? (scheduler.contextLength - P)
            return bundle.isEncoderDecoder ? SequenceRequest(encoderInput: ids, parameters: p)
                                           : SequenceRequest(prompt: ids, parameters: p, adapter: adapters.adapter(forModel: req.model))
        }
    }

    /// Maps a submit error to the HTTP error the client sees.
    func submitError(_ error: Error) -> APIError {
        if let e = error as? SchedulerError {
            switch e {
            case let .queueFull(_, retry):
                return APIError(.tooManyRequests, "The server is overloaded: all \(configuration.maxSequences) slots are busy and the queue is full. Please retry after \(retry) s.",
                                type: "rate_limit_error", code: "rate_limit_exceeded", retryAfter: retry)
            case .shuttingDown:
                return APIError(.serviceUnavailable, "The server is shutting down and accepts no new requests.",
                                type: "server_error", code: "shutting_down", retryAfter: 5)
            case .exceedsKVBudget:
                return APIError.invalid("\(e). Lower 'max_tokens'.", param: "max_tokens", code: "context_length_exceeded")
            }
        }
        return APIError.invalid("\(error)")
    }

    /// Submits every prompt for `perPrompt` choices and merges their events into one stream, each tagged with its
    /// sequence number (prompt i, choice j: i·perPrompt + j). All or nothing: when one cannot be submitted, those
    /// already submitted are cancelled.
    func submitAll(_ prompts: [SequenceRequest], perPrompt: Int) throws -> (events: AsyncStream<(Int, GenerationEvent)>, cancel: @Sendable () -> Void) {
        var streams: [AsyncStream<GenerationEvent>] = []
        var cancels: [@Sendable () -> Void] = []
        do {
            for s in prompts {
                let sub = try scheduler.submit(s, n: perPrompt)
                streams.append(sub.events)
                cancels.append(sub.cancel)
            }
        } catch {
            for c in cancels { c() }
            throw submitError(error)
        }
        let cancelAll: @Sendable () -> Void = { [cancels] in for c in cancels { c() } }
        let merged = AsyncStream<(Int, GenerationEvent)> { continuation in
            let task = Task {
                await withTaskGroup(of: Void.self) { group in
                    for (g, s) in streams.enumerated() {
                        group.addTask {
                            for await ev in s {
                                let j: Int
                                switch ev {
                                case let .token(i, _), let .text(i, _), let .finished(i, _, _), let .logprob(i, _): j = i
                                case .failed: j = 0
                                }
                                continuation.yield((g * perPrompt + j, ev))
                            }
                        }
                    }
                }
                continuation.finish()
            }
            continuation.onTermination = { _ in task.cancel(); cancelAll() }
        }
        return (merged, cancelAll)
    }

    /// Completions with several prompts, `n` > 1, `best_of` or `echo`. Takes over `watch` (stops it when done).
    func completeChoices(_ req: CompletionRequest, _ context: ServerRequestContext, _ endpoint: Endpoint,
                         _ watch: DisconnectWatch) async throws -> Response {
        var handedToStream = false
        defer { if !handedToStream { watch.stop() } }
        let submitted = try submitAll(promptRequests(req), perPrompt: req.bestOf)
        let count = req.prompts.count * req.bestOf
        let start = bundle.isEncoderDecoder ? 1 : 0
        context.info.set(prompt: req.prompts.reduce(0) { $0 + $1.count + start })
        var builder = ResponseBuilder(endpoint: endpoint, model: req.model, tokenizer: try bundle.tokenizer)
        builder.tools = req.tools   // chat with tools: each choice's calls are parsed on their own (Tools.swift)
        watch.onDisconnect(submitted.cancel)
        if req.stream {
            handedToStream = true
            return streamChoices(req, builder, submitted.events, submitted.cancel, context.info, watch)
        }

        var results = [GenerationResult?](repeating: nil, count: count)
        var ttft: Double? = nil
        var failure: String? = nil
        await withTaskCancellationHandler {
            for await (k, ev) in submitted.events {
                switch ev {
                case let .finished(_, result, timings):
                    results[k] = result
                    if let t = timings.timeToFirstToken { ttft = min(ttft ?? t, t) }
                case let .failed(message): failure = failure ?? message
                default: break
                }
            }
        } onCancel: { submitted.cancel() }
        if let failure {
            throw APIError(.internalServerError, "Generation failed: \(failure)", type: "server_error", code: "generation_failed")
        }
        guard results.allSatisfy({ $0 != nil }) else {
            throw APIError(.internalServerError, "Generation ended without a result.", type: "server_error")
        }
        let all = results.map { $0! }
        let completionTokens = all.reduce(0) { $0 + $1.tokens.count }
        context.info.set(completion: completionTokens, finish: all.first.map { ResponseBuilder.finishReason($0.finishReason) }, ttft: ttft)
        if all.contains(where: { $0.finishReason == .cancelled }) {
            if watch.clientGone {
                throw APIError(.clientClosedRequest, "The client closed the connection before the answer was ready; the request was cancelled.",
                               code: "client_disconnected")
            }
            throw APIError(.serviceUnavailable, "The request was cancelled: the server is shutting down.",
                           type: "server_error", code: "cancelled", retryAfter: 5)
        }
        var choices: [JSONValue] = []
        for (pi, ids) in req.prompts.enumerated() {
            // The prompt is scored once (by choice 0, which runs it); every choice echoes that score.
            let promptScore = all[pi * req.bestOf].promptLogprobs
            var group = Array(all[(pi * req.bestOf)..<((pi + 1) * req.bestOf)].enumerated())
            if req.bestOf > req.n {
                // The n with the highest cumulative log-probability, best first (ties: the earlier sequence).
                func score(_ r: GenerationResult) -> Double { (r.logprobs ?? []).reduce(0.0) { $0 + Double($1.logprob) } }
                group.sort { a, b in score(a.element) != score(b.element) ? score(a.element) > score(b.element) : a.offset < b.offset }
                group = Array(group.prefix(req.n))
            }
            for (j, (_, r)) in group.enumerated() {
                var r = r
                if !req.wantsLogprobs { r.logprobs = nil }
                if r.promptLogprobs?.isEmpty ?? true { r.promptLogprobs = promptScore }
                choices.append(builder.choice(r, index: pi * req.n + j, echoPrompt: req.echo ? ids : nil))
            }
        }
        let promptTokens = req.prompts.reduce(0) { $0 + $1.count + start }
        return jsonResponse(builder.response(choices: choices, promptTokens: promptTokens, completionTokens: completionTokens))
    }

    /// Streams several choices: each chunk carries its choice's `index`; the echo (if asked) comes first per choice.
    func streamChoices(_ req: CompletionRequest, _ builder: ResponseBuilder, _ events: AsyncStream<(Int, GenerationEvent)>,
                       _ cancel: @escaping @Sendable () -> Void, _ info: RequestInfo, _ watch: DisconnectWatch) -> Response {
        let perPrompt = req.bestOf   // == n when streaming
        let body = ResponseBody { writer in
            var done = false
            var generated = 0
            defer {
                watch.stop()
                if !done {
                    cancel()
                    info.set(completion: generated, finish: "cancelled")
                }
            }
            func send(_ json: JSONValue) async throws { try await writer.write(ByteBuffer(string: sseEvent(json))) }
            let usageNull = req.includeUsage
            for k in 0..<(req.prompts.count * perPrompt) {
                let ids = req.prompts[k / perPrompt]
                if builder.endpoint == .chat {
                    try await send(builder.chunk(text: "", role: true, withUsageNull: usageNull).withChoiceIndex(k))
                } else {
                    let text = req.echo ? builder.echoText(ids) : ""
                    try await send(builder.chunk(text: text, withUsageNull: usageNull).withChoiceIndex(k))
                }
            }
            var remaining = req.prompts.count * perPrompt
            var completion = 0
            var failed = false
            // Chat with tools: one parser per choice; its chunks get the choice's index.
            var toolStreams: [Int: ToolCallStream] = [:]
            func toolStream(_ k: Int) -> ToolCallStream? {
                guard let options = req.tools else { return nil }
                if let t = toolStreams[k] { return t }
                let t = ToolCallStream(builder: builder, options: options, usageNull: usageNull)
                toolStreams[k] = t
                return t
            }
            for await (k, ev) in events {
                switch ev {
                case .token:
                    generated += 1
                case .logprob:
                    break   // several choices: each choice's logprobs come whole with its finish chunk
                case let .text(_, delta):
                    if let ts = toolStream(k) {
                        for c in ts.feed(delta) { try await send(c.withChoiceIndex(k)) }
                        break
                    }
                    try await send(builder.chunk(text: delta, withUsageNull: usageNull).withChoiceIndex(k))
                case let .finished(_, result, timings):
                    remaining -= 1
                    completion += result.tokens.count
                    info.set(completion: completion, finish: ResponseBuilder.finishReason(result.finishReason), ttft: timings.timeToFirstToken)
                    if result.finishReason == .cancelled {
                        if !failed {
                            let e = APIError(.serviceUnavailable, "The request was cancelled: the client disconnected or the server is shutting down.",
                                             type: "server_error", code: "cancelled")
                            try await send(e.json)
                            failed = true
                        }
                    } else if !failed {
                        var lp: JSONValue = .null
                        if let l = result.logprobs {
                            lp = req.echo ? builder.completionLogprobs(prompt: req.prompts[k / perPrompt], promptLogprobs: result.promptLogprobs ?? [],
                                                                       generated: l)
                                          : builder.logprobs(l)
                        }
                        var last = builder.chunk(text: builder.endpoint == .chat ? nil : "", finish: result.finishReason, withUsageNull: usageNull)
                        last = last.withChoiceIndex(k).replacingInChoice("logprobs", with: lp)
                        for c in toolStream(k)?.finish(last, result.finishReason) ?? [last] { try await send(c.withChoiceIndex(k)) }
                    }
                case let .failed(message):
                    if !failed {
                        let e = APIError(.internalServerError, "Generation failed: \(message)", type: "server_error", code: "generation_failed")
                        info.set(finish: "failed")
                        try await send(e.json)
                        failed = true
                    }
                }
            }
            if remaining == 0 && !failed && req.includeUsage {
                let promptTokens = req.prompts.reduce(0) { $0 + $1.count + (self.bundle.isEncoderDecoder ? 1 : 0) }
                try await send(builder.usageChunk(prompt: promptTokens, completion: completion))
            }
            done = true
            try await writer.write(ByteBuffer(string: sseDone))
            try await writer.finish(nil)
        }
        return Response(status: .ok,
                        headers: [.contentType: "text/event-stream; charset=utf-8", .cacheControl: "no-cache"],
                        body: body)
    }
}

extension ResponseBuilder {
    /// The prompt as echoed text (special tokens kept, as the model read them).
    func echoText(_ ids: [Int]) -> String { (try? tokenizer.decode(ids, skipSpecial: false)) ?? "" }

    /// One choice object for `r` at `index`, as `full` writes it; with `echoPrompt`, its text starts with the prompt's
    /// and its logprobs (if any) with the prompt's tokens (the first one's value and alternatives null).
    func choice(_ r: GenerationResult, index: Int, echoPrompt: [Int]?) -> JSONValue {
        guard case let .array(cs)? = full(r)["choices"], let c = cs.first else { return .null }
        var out = c.withIndex(index)
        if let ids = echoPrompt, endpoint == .completion {
            out = out.replacing("text", with: .string(echoText(ids) + r.text))
            if let l = r.logprobs {
                out = out.replacing("logprobs", with: completionLogprobs(prompt: ids, promptLogprobs: r.promptLogprobs ?? [], generated: l))
            } else if r.promptLogprobs != nil {
                out = out.replacing("logprobs", with: completionLogprobs(prompt: ids, promptLogprobs: r.promptLogprobs ?? [], generated: []))
            }
        }
        return out
    }

    /// A whole response with these choices.
    func response(choices: [JSONValue], promptTokens: Int, completionTokens: Int) -> JSONValue {
        .object([("id", .string(id)), ("object", .string(object)), ("created", .int(created)), ("model", .string(model)),
                 ("choices", .array(choices)), ("usage", Self.usage(prompt: promptTokens, completion: completionTokens)),
                 ("system_fingerprint", .null)])
    }

    /// Completions logprobs over the echoed prompt and the generated tokens: `tokens`, `token_logprobs` (null for
    /// the first prompt token, which has no context), `top_logprobs` (null there too) and `text_offset`.
    func completionLogprobs(prompt: [Int], promptLogprobs: [TokenLogprob], generated: [TokenLogprob]) -> JSONValue {
        var offset = 0
        var tokens: [JSONValue] = [], values: [JSONValue] = [], tops: [JSONValue] = [], offsets: [JSONValue] = []
        func add(_ id: Int, _ lp: TokenLogprob?) {
            let s = tokenizer.tokenText(id)
            tokens.append(.string(s))
            values.append(lp.map { .float($0.logprob) } ?? .null)
            tops.append(lp.map { l in .object(l.top.map { (tokenizer.tokenText($0.id), .float($0.logprob)) }) } ?? .null)
            offsets.append(.int(offset))
            offset += s.count
        }
        for (i, id) in prompt.enumerated() { add(id, i == 0 ? nil : (i - 1 < promptLogprobs.count ? promptLogprobs[i - 1] : nil)) }
        for t in generated { add(t.id, t) }
        return .object([("tokens", .array(tokens)), ("token_logprobs", .array(values)), ("top_logprobs", .array(tops)),
                         ("text_offset", .array(offsets))])
    }
}

extension JSONValue {
    /// An object with `key`'s value replaced (or appended).
    func replacing(_ key: String, with value: JSONValue) -> JSONValue {
        guard case var .object(o) = self else { return self }
        if let i = o.firstIndex(where: { $0.0 == key }) { o[i].1 = value } else { o.append((key, value)) }
        return .object(o)
    }

    func withIndex(_ i: Int) -> JSONValue { replacing("index", with: .int(i)) }

    /// A response or chunk whose single choice gets `index`.
    func withChoiceIndex(_ i: Int) -> JSONValue { replacingInChoice("index", with: .int(i)) }

    func replacingInChoice(_ key: String, with value: JSONValue) -> JSONValue {
        guard case let .array(cs)? = self["choices"] else { return self }
        return replacing("choices", with: .array(cs.map { $0.replacing(key, with: value) }))
    }
}
