import ArgumentParser
import CausalLM
import Foundation

struct Models: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the known model names (for `causal pull NAME` and `--model NAME`), their sizes and which are cached.")

    @Flag(name: .long, help: "One JSON object: the cache directory and each model's name, file, size, SHA-256, parts and cached path.")
    var json = false

    func run() throws {
        let dir = ModelCache.modelsDirectory
        let rows = ModelRegistry.known.map { ($0, ModelRegistry.cachedPath(of: $0)) }
        if json {
            let items = rows.map { m, cached in
                "{\"name\": \(jsonString(m.name)), \"description\": \(jsonString(m.summary)), "
                + "\"file\": \(jsonString(m.fileName)), \"size\": \(m.size), \"sha256\": \(jsonString(m.sha256)), "
                + "\"parts\": \(m.parts.count), \"default\": \(m.name == ModelRegistry.defaultName), "
                + "\"cached\": \(cached != nil), \"path\": \(cached.map(jsonString) ?? "null")}"
            }
            writeOut("{\"cache\": \(jsonString(dir.path)), \"models\": [" + items.joined(separator: ", ") + "]}\n")
            return
        }
        let table = [["NAME", "SIZE", "PARTS", "DESCRIPTION", "CACHED"]] + rows.map { m, cached in
            [m.name, ModelRegistry.formatBytes(m.size), "\(m.parts.count)", m.summary, cached ?? "no"]
        }
        let widths = (0..<5).map { c in table.map { $0[c].count }.max()! }
        var out = ""
        for row in table {
            out += row.enumerated().map { c, cell in
                c == row.count - 1 ? cell : cell.padding(toLength: widths[c], withPad: " ", startingAt: 0)
            }.joined(separator: "  ") + "\n"
        }
        out += "cache: \(dir.path)\n"
        writeOut(out)
    }
}
