import ArgumentParser
import CausalLM
import Foundation

@main
struct Causal: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "causal",
        abstract: "Run transformer language models: generation, chat, tokenization.",
        subcommands: [Generate.self, Chat.self, Tokenize.self, Detokenize.self, Info.self, Bench.self, Embed.self, Serve.self, Train.self, Export.self, Eval.self, Score.self, Pull.self, Models.self, Analyze.self, CheckDevice.self])
}

/// Options shared by every command that loads a model.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "A GGUF model file or a Hugging Face model directory (config.json, model.safetensors, tokenizer.json) (default: SmolLM2-135M-Instruct Q4_1, fetched into the cache if missing).")
    var model: String?

    @Option(name: .long, help: "fast (quantized weights in place) or reference (fp32 weights).")
    var precision: PrecisionArgument = .fast

    @Option(name: .long, help: "Worker threads (default: all cores).")
    var threads: Int?

    @Option(name: .long, help: "Activations in products with quantized weights: fp32 (default; fast equals reference bit for bit) or int8 (faster, opt-in, close but not equal; see docs/int8-activations.md). Default: $CAUSAL_ACTIVATIONS or fp32.")
    var activations: ActivationsArgument?

    @Option(name: .long, help: KVCacheArgument.help)
    var kvCache: KVCacheArgument?

    func validate() throws {
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func load() throws -> ModelBundle {
        if let a = activations { Activations.current = a.value }
        if let k = kvCache { KVPrecision.current = k.value }
        return try ModelBundle(path: model, precision: precision.value, threads: threads)
    }

    /// The tokenizer alone: a GGUF file's, or a model directory's tokenizer.json.
    func tokenizer() throws -> any TextTokenizer {
        let path = try model.map { try ModelRegistry.resolve($0) } ?? ModelFetcher.ensure()
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
            return try ModelBundle(path: path, precision: .fast, threads: threads).tokenizer
        }
        return try ByteLevelBPETokenizer(gguf: GGUFFile(path: path))
    }
}

enum ActivationsArgument: String, ExpressibleByArgument, CaseIterable {
    case fp32, int8
    var value: Activations { self == .int8 ? .int8 : .fp32 }
}

enum KVCacheArgument: String, ExpressibleByArgument, CaseIterable {
    case fp32, fp16
    var value: KVPrecision { self == .fp16 ? .fp16 : .fp32 }
    static let help: ArgumentHelp = "Key/value cache of decoder models: fp32 (default; fast equals reference bit for bit) or fp16 (half the memory and the bytes attention reads; opt-in, close but not equal; CPU only; see docs/kv-cache.md). Default: $CAUSAL_KV_CACHE or fp32."
}

enum PrecisionArgument: String, ExpressibleByArgument, CaseIterable {
    case fast, reference
    var value: Precision { self == .fast ? .fast : .reference }
}

/// Sampling options shared by `generate` and `chat`.
struct SamplingOptions: ParsableArguments {
    @Option(name: .long, help: "Maximum number of new tokens.") var maxTokens: Int = 256
    @Option(name: .long, help: "Minimum number of new tokens: end tokens cannot be chosen before (Hugging Face's min_new_tokens).") var minTokens: Int = 0
    @Option(name: .long, help: "Sampling temperature; 0 is greedy.") var temperature: Float = 0
    @Option(name: .long, help: "Keep the K most likely tokens (0: off).") var topK: Int = 0
    @Option(name: .long, help: "Nucleus sampling mass (1: off).") var topP: Float = 1
    @Option(name: .long, help: "Drop tokens below this fraction of the top probability (0: off).") var minP: Float = 0
    @Option(name: .long, help: "Repetition penalty (1: off).") var repeatPenalty: Float = 1
    @Option(name: .long, help: "Random seed (same seed, same output).") var seed: UInt64?
    @Option(name: .long, help: "Stop when this text appears (repeatable).") var stop: [String] = []

    var parameters: GenerateParameters {
        GenerateParameters(maxNewTokens: maxTokens, temperature: temperature, topK: topK, topP: topP, minP: minP,
                           repetitionPenalty: repeatPenalty, seed: seed, stop: stop, minNewTokens: minTokens)
    }

    func validate() throws {
        do { try parameters.validate() } catch { throw ValidationError("\(error)") }
    }
}

/// Runs `body`; a library error becomes one line on stderr and exit status 1.
func reportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let e as CausalError {
        FileHandle.standardError.write("causal: error: \(e)\n".data(using: .utf8)!)
        throw ExitCode(1)
    } catch let e as ChatTemplateError {
        FileHandle.standardError.write("causal: error: \(e)\n".data(using: .utf8)!)
        throw ExitCode(1)
    }
}

func writeOut(_ s: String) {
    FileHandle.standardOutput.write(s.data(using: .utf8)!)
}

/// JSON string literal (RFC 8259 escaping).
func jsonString(_ s: String) -> String { JSONText.quoted(s) }
