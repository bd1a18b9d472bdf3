import ArgumentParser
import CausalLM
import Foundation

struct Pull: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fetch a known model by name into the cache (checking its SHA-256) and print its path.",
        discussion: "Progress goes to stderr, the path to stdout. `causal models` lists the names.")

    @Argument(help: "A known model name, e.g. qwen2.5-coder-0.5b-instruct.")
    var name: String

    func run() throws {
        try reportingErrors {
            guard let model = ModelRegistry.model(named: name) else {
                throw CausalError.invalidArgument("unknown model '\(name)'; known names: "
                                                  + ModelRegistry.known.map(\.name).joined(separator: ", "))
            }
            if let cached = ModelRegistry.cachedPath(of: model) {
                FileHandle.standardError.write("\(model.name) is already in the cache\n".data(using: .utf8)!)
                writeOut(cached + "\n")
                return
            }
            writeOut(try ModelRegistry.ensure(model) + "\n")
        }
    }
}
