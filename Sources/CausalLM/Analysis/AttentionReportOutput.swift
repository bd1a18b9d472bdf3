import Foundation

// What `causal analyze attention` writes: attention.json (schema in docs/analyze.md), one SVG heat map per head
// (L{layer}H{head}.svg) and a per-layer summary table. Every file is written to a temporary name beside its target
// and renamed into place.

extension AttentionReport {
    /// Per layer over its heads: (min, mean, max) rank, mean entropy, mean diagonal mass.
    public struct LayerSummary: Sendable {
        public let layer: Int
        public let rankMin: Int, rankMax: Int
        public let rankMean: Double
        /// Mean rank under numpy's float64 rule.
        public let rankFloat64Mean: Double
        public let entropyMean: Double
        public let diagonalMassMean: Double
    }

    public var layerSummaries: [LayerSummary] {
        (0..<layerCount).map { l in
            let hs = (0..<headCount).map { head(layer: l, head: $0) }
            let n = Double(hs.count)
            return LayerSummary(layer: l, rankMin: hs.map(\.rank).min() ?? 0, rankMax: hs.map(\.rank).max() ?? 0,
                                rankMean: Double(hs.reduce(0) { $0 + $1.rank }) / n,
                                rankFloat64Mean: Double(hs.reduce(0) { $0 + $1.rankFloat64 }) / n,
                                entropyMean: hs.reduce(0) { $0 + $1.entropy } / n,
                                diagonalMassMean: hs.reduce(0) { $0 + $1.diagonalMass } / n)
        }
    }

    /// attention.json; with `matrices`, each head's T × T probabilities too.
    public func json(matrices: Bool = false) -> String {
        func num(_ x: Double) -> String { x.isFinite ? "\(x)" : "null" }
        func list(_ xs: [Double]) -> String { "[" + xs.map(num).joined(separator: ", ") + "]" }
        let q = JSONText.quoted
        var o = "{\n"
        o += "  \"format\": \"causal-attention-analysis\",\n  \"version\": 1,\n"
        o += "  \"model\": \(q(model, false)),\n  \"architecture\": \(q(architecture, false)),\n"
        o += "  \"attention\": \(q(attention, false)),\n  \"size\": \(tokenIDs.count),\n"
        o += "  \"tokens\": [" + tokens.map { q($0, false) }.joined(separator: ", ") + "],\n"
        o += "  \"token_ids\": [" + tokenIDs.map(String.init).joined(separator: ", ") + "],\n"
        o += "  \"layer_count\": \(layerCount),\n  \"head_count\": \(headCount),\n"
        switch threshold {
        case let .relative(eps):
            o += "  \"threshold\": {\"rule\": \"relative\", \"formula\": \"sigma_max * size * epsilon\", \"epsilon\": \(num(eps))},\n"
        case let .absolute(t):
            o += "  \"threshold\": {\"rule\": \"absolute\", \"value\": \(num(t))},\n"
        }
        o += "  \"layers\": [\n" + layerSummaries.map { s in
            "    {\"layer\": \(s.layer), \"rank_min\": \(s.rankMin), \"rank_mean\": \(num(s.rankMean)), \"rank_max\": \(s.rankMax), "
                + "\"rank_float64_mean\": \(num(s.rankFloat64Mean)), "
                + "\"entropy_mean\": \(num(s.entropyMean)), \"diagonal_mass_mean\": \(num(s.diagonalMassMean))}"
        }.joined(separator: ",\n") + "\n  ],\n"
        o += "  \"heads\": [\n" + heads.map { h in
            var e = "    {\"layer\": \(h.layer), \"head\": \(h.head), \"mask\": \(q(h.mask, false)), \"rank\": \(h.rank), \"rank_float64\": \(h.rankFloat64), "
            e += "\"tolerance\": \(num(h.tolerance)), \"entropy\": \(num(h.entropy)), \"diagonal_mass\": \(num(h.diagonalMass)), "
            e += "\"output_error\": \(num(h.outputError)), \"value_scale\": \(num(h.valueScale)), "
            if let l = h.lseError { e += "\"lse_error\": \(num(l)), " }
            e += "\"singular_values\": \(list(h.singularValues))"
            if matrices {
                e += ", \"matrix\": [" + (0..<h.size).map { i in
                    list(Array(h.probabilities[(i * h.size)..<((i + 1) * h.size)]))
                }.joined(separator: ", ") + "]"
            }
            return e + "}"
        }.joined(separator: ",\n") + "\n  ]\n}\n"
        return o
    }

    /// The heat map of one head: row i (query) against column j (key); shade ∝ √p (so that small masses show), keys
    /// the mask hides in grey; tokens on the axes when there are at most 64.
    public func svg(layer: Int, head h: Int) -> String {
        let a = head(layer: layer, head: h), T = a.size
        let cell = max(2, min(16, 640 / max(T, 1)))
        let labels = T <= 64
        let margin = labels ? 110 : 30, top = 40
        let side = cell * T
        let width = margin + side + 20, height = top + margin + side
        func esc(_ s: String) -> String {
            var o = ""
            for ch in s.unicodeScalars {
                switch ch {
                case "&": o += "&amp;"
                case "<": o += "&lt;"
                case ">": o += "&gt;"
                case "\"": o += "&quot;"
                case "\n": o += "\\n"
                case "\t": o += "\\t"
                default: o += ch.value < 0x20 || ch.value == 0x7f ? "·" : String(ch)
                }
            }
            return o
        }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" viewBox=\"0 0 \(width) \(height)\" font-family=\"monospace\" font-size=\"\(max(6, min(11, cell)))\">\n"
        s += "<rect width=\"\(width)\" height=\"\(height)\" fill=\"white\"/>\n"
        let title = "layer \(layer) head \(h) (\(a.mask)): rank \(a.rank)/\(T), entropy \(String(format: "%.3f", a.entropy)) nats, diagonal \(String(format: "%.3f", a.diagonalMass))"
        s += "<text x=\"4\" y=\"16\" font-size=\"12\">\(esc(title))</text>\n"
        s += "<text x=\"4\" y=\"32\" font-size=\"10\" fill=\"#555\">rows: queries, columns: keys; shade ∝ √p (white 0, black 1); grey: masked</text>\n"
        s += "<g transform=\"translate(\(margin),\(top))\">\n"
        for i in 0..<T {
            // Masked keys: runs of consecutive hidden cells, one rectangle each.
            var j = 0
            while j < T {
                if a.allowed[i * T + j] { j += 1; continue }
                let start = j
                while j < T && !a.allowed[i * T + j] { j += 1 }
                s += "<rect x=\"\(start * cell)\" y=\"\(i * cell)\" width=\"\((j - start) * cell)\" height=\"\(cell)\" fill=\"#d8d8d8\"/>\n"
            }
            for j in 0..<T where a.allowed[i * T + j] {
                let level = Int((255 * (1 - a.p(i, j).squareRoot())).rounded())
                guard level < 255 else { continue }   // white on white
                let h2 = String(max(0, level), radix: 16), hex = h2.count == 1 ? "0" + h2 : h2
                s += "<rect x=\"\(j * cell)\" y=\"\(i * cell)\" width=\"\(cell)\" height=\"\(cell)\" fill=\"#\(hex)\(hex)\(hex)\"/>\n"
            }
        }
        s += "<rect x=\"0\" y=\"0\" width=\"\(side)\" height=\"\(side)\" fill=\"none\" stroke=\"#888\"/>\n"
        if labels {
            for (i, t) in tokens.enumerated() {
                let text = esc(String(t.prefix(14)))
                let c = i * cell + cell / 2
                s += "<text x=\"-4\" y=\"\(c)\" text-anchor=\"end\" dominant-baseline=\"middle\">\(text)</text>\n"
                s += "<text transform=\"translate(\(c),\(side + 4)) rotate(90)\" dominant-baseline=\"middle\">\(text)</text>\n"
            }
        }
        s += "</g>\n</svg>\n"
        return s
    }

    /// A per-layer table: ranks (min/mean/max of T), mean entropy, mean diagonal mass.
    public func summaryTable() -> String {
        let T = tokenIDs.count
        var o = "\(model): \(architecture), \(attention) attention, \(T) tokens, \(layerCount) layers × \(headCount) heads; rank threshold \(threshold)\n"
        o += "layer  rank min/mean/max (of \(T))  rank mean, float64 rule  entropy (nats)  diagonal mass\n"
        for s in layerSummaries {
            o += String(format: "%5ld  %6ld %7.2f %6ld          %8.2f                %8.4f        %7.4f\n", s.layer, s.rankMin,
                        s.rankMean, s.rankMax, s.rankFloat64Mean, s.entropyMean, s.diagonalMassMean)
        }
        let worst = heads.map(\.outputError).max() ?? 0
        o += String(format: "max |P·V − forward output| over all heads: %.3g\n", worst)
        return o
    }

    /// Writes attention.json and every head's SVG into `directory` (created if needed); returns the paths written.
    @discardableResult
    public func write(to directory: String, matrices: Bool = false) throws -> [String] {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw CausalError.io(path: directory, reason: "cannot create the output directory: \(error.localizedDescription)")
        }
        var written: [String] = []
        func put(_ name: String, _ text: String) throws {
            let path = URL(fileURLWithPath: directory).appendingPathComponent(name).path
            try LlamaCheckpoint.atomicWrite(path) { try $0.write(contentsOf: Data(text.utf8)) }
            written.append(path)
        }
        try put("attention.json", json(matrices: matrices))
        for l in 0..<layerCount { for h in 0..<headCount { try put("L\(l)H\(h).svg", svg(layer: l, head: h)) } }
        return written
    }
}
