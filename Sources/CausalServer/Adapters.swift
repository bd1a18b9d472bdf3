import CausalLM
import Foundation

/// A LoRA adapter the server loads at start (`causal serve --adapter name=DIR`): a PEFT directory
/// (adapter_config.json + adapter_model.safetensors) for the served base model.
public struct ServedAdapter: Sendable, Equatable {
    /// The id clients send in `model` (also accepted as `"<base>:<name>"`).
    public var name: String
    public var directory: String

    public init(name: String, directory: String) {
        self.name = name; self.directory = directory
    }

    /// Parses `name=DIR`; errors say what is wrong with the argument.
    public init(argument: String) throws {
        guard let eq = argument.firstIndex(of: "=") else {
            throw CausalError.invalidArgument("--adapter '\(argument)': expected name=DIR (the name clients send in 'model')")
        }
        let name = String(argument[..<eq]), dir = String(argument[argument.index(after: eq)...])
        guard !dir.isEmpty else { throw CausalError.invalidArgument("--adapter '\(argument)': the directory is empty") }
        self.init(name: name, directory: dir)
        try validateName()
    }

    func validateName() throws {
        guard !name.isEmpty else { throw CausalError.invalidArgument("adapter name is empty (--adapter name=DIR)") }
        guard !name.contains(":"), !name.contains("/"), name.allSatisfy({ !$0.isWhitespace }) else {
            throw CausalError.invalidArgument("adapter name '\(name)' must not contain ':', '/' or spaces (clients select it as 'name' or 'base:name')")
        }
    }
}

/// The adapters a service serves, by the names requests select them with.
struct AdapterTable: Sendable {
    struct Entry: Sendable {
        let name: String
        let directory: String
        let adapter: LoRAAdapter
    }
    /// In the order given.
    let entries: [Entry]
    /// Every `model` value that selects an adapter: `name` and `<base name>:name` for each of the base's names.
    let byModelName: [String: LoRAAdapter]
    /// The names of the adapter entries, and the ids that select them.
    let idsByName: [String: Set<String>]

    /// Loads every adapter for the bundle's decoder; `baseNames` are the ids the base model answers to (the first is
    /// the one /v1/models lists). Errors name the adapter and its directory.
    init(_ specs: [ServedAdapter], bundle: ModelBundle, baseNames: [String]) throws {
        var entries: [Entry] = [], byName: [String: LoRAAdapter] = [:], ids: [String: Set<String>] = [:]
        if !specs.isEmpty {
            guard let decoder = bundle.model as? DecoderModel else {
                throw CausalError.invalidArgument("--adapter: LoRA adapters need a decoder model (llama, qwen2, qwen3, gemma3); \(bundle.path) is not one")
            }
            for s in specs {
                try s.validateName()
                guard !baseNames.contains(s.name) else {
                    throw CausalError.invalidArgument("--adapter \(s.name)=\(s.directory): the name '\(s.name)' is already the base model's id")
                }
                guard ids[s.name] == nil else {
                    throw CausalError.invalidArgument("--adapter \(s.name)=\(s.directory): the name '\(s.name)' is given twice")
                }
                let adapter = try LoRAAdapter.load(directory: s.directory, model: decoder.config)
                let names = Set([s.name] + baseNames.map { "\($0):\(s.name)" })
                for n in names { byName[n] = adapter }
                ids[s.name] = names
                entries.append(Entry(name: s.name, directory: s.directory, adapter: adapter))
            }
        }
        self.entries = entries
        byModelName = byName
        idsByName = ids
    }

    var acceptedNames: Set<String> { Set(byModelName.keys) }

    /// The adapter a request's `model` selects (nil: the base model).
    func adapter(forModel model: String) -> LoRAAdapter? { byModelName[model] }

    /// The entry a `model` id names, if it names an adapter.
    func entry(forModel model: String) -> Entry? {
        guard let a = byModelName[model] else { return nil }
        return entries.first { $0.adapter === a }
    }

    /// "'base'" or "'base' and the adapters 'a', 'b'" for error messages.
    func describe(base: String) -> String {
        entries.isEmpty ? "'\(base)'" : "'\(base)' and the adapters \(entries.map { "'\($0.name)'" }.joined(separator: ", "))"
    }
}
