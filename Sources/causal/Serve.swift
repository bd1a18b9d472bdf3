import ArgumentParser
import CausalLM
import CausalServer
import Foundation
import Logging

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve an OpenAI-compatible HTTP API (chat and text completions, streaming) with continuous batching.",
        discussion: """
        Endpoints: POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings (with --embedding-model), \
        GET /v1/models, GET /health, GET /metrics (Prometheus). Requests are batched continuously: a greedy or seeded \
        request gets exactly the tokens it gets alone. As in the OpenAI API, 'temperature' defaults to 1 (sampling; \
        'causal generate' defaults to 0): send "temperature": 0 for greedy answers. SIGINT/SIGTERM stop the server \
        gracefully. An encoder-decoder model (T5) reads the prompt of /v1/completions with its encoder and returns only \
        the decoder's text; without a chat template it answers /v1/chat/completions with 400. See docs/server-api.md. \
        With --adapter name=DIR (repeatable), LoRA adapters are served beside the base model: a request selects one \
        with "model": "name" or "<base>:name", and sequences of every adapter share each step (docs/adapters.md).
        """)

    @Option(name: .long, help: "A GGUF model file or a Hugging Face model directory with its tokenizer.json (decoder-only, or encoder-decoder such as T5: the prompt goes to the encoder) (default: SmolLM2-135M-Instruct Q4_1, fetched into the cache if missing).")
    var model: String?

    @Option(name: .long, help: "The model id clients send in 'model' (default: the file name without .gguf).")
    var modelName: String?

    @Option(name: .long, help: "Address to listen on.") var host = "127.0.0.1"
    @Option(name: .long, help: "Port to listen on (0: any free port).") var port = 8080
    @Option(name: .long, help: "Sequences generated at once.") var maxSequences = 16
    @Option(name: .long, help: "Longest sequence (prompt + completion) served (default: the model's context).") var context: Int?
    @Option(name: .long, help: "Tokens per forward step (decode tokens plus prompt chunks).") var maxTokensPerStep = 512
    @Option(name: .long, help: "Requests that may wait for a slot; beyond them the server answers 429.") var maxQueue = 256
    @Option(name: .long, help: "KV-cache positions all running sequences may reserve together (default: max-sequences × context).")
    var maxKvTokens: Int?
    @Option(name: .long, help: ArgumentHelp("MiB of keys and values the automatic prefix cache keeps, so a prompt that starts like an earlier one (a system prompt, a resent conversation) runs only its new tokens (0: off).", valueName: "MiB"))
    var cacheMemory = Scheduler.defaultPrefixCacheBytes >> 20
    @Option(name: .long, help: "Require 'Authorization: Bearer KEY' on /v1/* (default: $CAUSAL_API_KEY if set).") var apiKey: String?
    @Option(name: .long, help: "Largest request body in bytes (413 beyond).") var maxBodyBytes = 4 << 20
    @Option(name: .long, help: "Seconds running requests may finish after SIGINT/SIGTERM before they are cancelled.")
    var shutdownGrace: Double = 30
    @Option(name: .long, help: "Worker threads (default: all cores).") var threads: Int?
    @Option(name: .long, help: "Activations in products with quantized weights: fp32 (default) or int8 (faster, opt-in, close but not equal; see docs/int8-activations.md). Default: $CAUSAL_ACTIVATIONS or fp32.")
    var activations: ActivationsArgument?
    @Option(name: .long, help: KVCacheArgument.help) var kvCache: KVCacheArgument?
    @Option(name: .long, help: ArgumentHelp("Serve POST /v1/embeddings with this embedding model directory (config.json, model.safetensors, tokenizer.json); 'default': all-MiniLM-L6-v2, fetched into the cache if missing.", valueName: "dir|default"))
    var embeddingModel: String?
    @Option(name: .long, help: ArgumentHelp("Serve a LoRA adapter (a PEFT directory) beside the base model, selected with \"model\": \"name\" or \"<base>:name\" (repeatable; docs/adapters.md).", valueName: "name=dir"))
    var adapter: [String] = []
    @Option(name: .long, help: "trace, debug, info, notice, warning, error or critical.") var logLevel = "info"
    @Option(name: .long, help: ArgumentHelp(DeviceArgument.help)) var device: DeviceArgument = .cpu

    func validate() throws {
        if port < 0 || port > 65535 { throw ValidationError("--port must be in 0...65535") }
        if maxSequences < 1 { throw ValidationError("--max-sequences must be at least 1") }
        if let c = context, c < 2 { throw ValidationError("--context must be at least 2") }
        if maxTokensPerStep < 1 { throw ValidationError("--max-tokens-per-step must be at least 1") }
        if maxQueue < 0 { throw ValidationError("--max-queue must be >= 0") }
        if let k = maxKvTokens, k < 2 { throw ValidationError("--max-kv-tokens must be at least 2") }
        if cacheMemory < 0 || cacheMemory > 1 << 30 { throw ValidationError("--cache-memory must be in 0...\(1 << 30) (MiB)") }
        if maxBodyBytes < 1 { throw ValidationError("--max-body-bytes must be at least 1") }
        if shutdownGrace < 0 { throw ValidationError("--shutdown-grace must be >= 0") }
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1") }
        if Logger.Level(rawValue: logLevel) == nil { throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical") }
        if let k = apiKey, k.isEmpty { throw ValidationError("--api-key must not be empty") }
        if let e = embeddingModel, e.isEmpty { throw ValidationError("--embedding-model must not be empty (give a directory or 'default')") }
        if device == .cuda, !adapter.isEmpty { throw ValidationError("--device cuda: LoRA adapters (--adapter) run on the CPU only") }
        for a in adapter {
            do { _ = try ServedAdapter(argument: a) } catch { throw ValidationError("\(error)") }
        }
    }

    func run() async throws {
        if let a = activations { Activations.current = a.value }
        if let k = kvCache { KVPrecision.current = k.value }
        let key = apiKey ?? ProcessInfo.processInfo.environment["CAUSAL_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        var config = ServerConfiguration(
            host: host, port: port, modelPath: model, modelName: modelName, maxSequences: maxSequences, context: context,
            maxTokensPerStep: max(maxTokensPerStep, maxSequences), maxQueue: maxQueue, maxKVTokens: maxKvTokens, apiKey: key,
            maxBodyBytes: maxBodyBytes, shutdownGracePeriod: shutdownGrace, threads: threads, embeddingModel: embeddingModel,
            logLevel: Logger.Level(rawValue: logLevel) ?? .info)
        config.prefixCacheBytes = cacheMemory << 20
        config.adapters = try adapter.map { try ServedAdapter(argument: $0) }
        config.device = device.value
        do {
            try await runServer(config)
        } catch let e as CausalError {
            FileHandle.standardError.write("causal: error: \(e)\n".data(using: .utf8)!)
            throw ExitCode(1)
        }
    }
}
