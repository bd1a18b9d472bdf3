import Foundation

/// `loss.svg`: training and evaluation loss by optimizer step, drawn from the lines of `metrics.jsonl`.
///
/// Each point is a `<circle>` whose `<title>` carries the exact value (`step 12: loss 0.812345`), so the picture
/// can be read by a program as well as by eye; the two series are `<polyline>`s with `class="train"` / `"eval"`.
public enum LossPlot {
    public struct Point: Sendable, Equatable {
        public var step: Int
        public var loss: Double
        public init(step: Int, loss: Double) { self.step = step; self.loss = loss }
    }

    /// The training ("loss") and evaluation ("eval_loss") points of a metrics.jsonl text, by step. A step logged
    /// twice (a run resumed from an earlier checkpoint into the same directory) keeps its last value.
    public static func points(metricsJSONL text: String) -> (train: [Point], eval: [Point]) {
        var train: [Int: Double] = [:], eval: [Int: Double] = [:]
        for line in text.split(separator: "\n") {
            guard let obj = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any],
                  let step = (obj["step"] as? NSNumber)?.intValue else { continue }
            if let l = (obj["loss"] as? NSNumber)?.doubleValue, l.isFinite { train[step] = l }
            if let l = (obj["eval_loss"] as? NSNumber)?.doubleValue, l.isFinite { eval[step] = l }
        }
        func sorted(_ d: [Int: Double]) -> [Point] { d.keys.sorted().map { Point(step: $0, loss: d[$0]!) } }
        return (sorted(train), sorted(eval))
    }

    /// An SVG document plotting both series on shared axes (steps on x, loss on y from 0).
    public static func svg(train: [Point], eval: [Point], title: String = "loss") -> String {
        let W = 640.0, H = 400.0, left = 60.0, right = 20.0, top = 30.0, bottom = 45.0
        let all = train + eval
        let maxStep = max(1, all.map(\.step).max() ?? 1)
        let minStep = min(all.map(\.step).min() ?? 0, maxStep - 1)
        let maxLoss = niceCeiling(max(all.map(\.loss).max() ?? 1, 1e-12))
        func x(_ s: Int) -> Double { left + (W - left - right) * Double(s - minStep) / Double(maxStep - minStep) }
        func y(_ l: Double) -> Double { top + (H - top - bottom) * (1 - l / maxLoss) }
        func f(_ v: Double) -> String { String(format: "%.2f", v) }
        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(W))" height="\(Int(H))" viewBox="0 0 \(Int(W)) \(Int(H))" \
        font-family="sans-serif" font-size="12">
        <title>\(escape(title))</title>
        <rect width="100%" height="100%" fill="white"/>
        <g class="axes" stroke="#888" fill="none">
        <line x1="\(f(left))" y1="\(f(y(0)))" x2="\(f(W - right))" y2="\(f(y(0)))"/>
        <line x1="\(f(left))" y1="\(f(top))" x2="\(f(left))" y2="\(f(y(0)))"/>
        </g>

        """
        // Five y ticks (0 ... maxLoss), x ticks at the first and last step and three between.
        for i in 0...4 {
            let v = maxLoss * Double(i) / 4
            s += "<text class=\"ytick\" x=\"\(f(left - 6))\" y=\"\(f(y(v) + 4))\" text-anchor=\"end\" data-value=\"\(v)\">\(String(format: "%.3g", v))</text>\n"
            s += "<line x1=\"\(f(left))\" y1=\"\(f(y(v)))\" x2=\"\(f(W - right))\" y2=\"\(f(y(v)))\" stroke=\"#eee\"/>\n"
        }
        var ticks = Set<Int>()
        for i in 0...4 { ticks.insert(minStep + Int((Double(maxStep - minStep) * Double(i) / 4).rounded())) }
        for t in ticks.sorted() {
            s += "<text class=\"xtick\" x=\"\(f(x(t)))\" y=\"\(f(H - bottom + 16))\" text-anchor=\"middle\" data-value=\"\(t)\">\(t)</text>\n"
        }
        s += "<text x=\"\(f((left + W - right) / 2))\" y=\"\(f(H - 8))\" text-anchor=\"middle\">step</text>\n"
        s += "<text x=\"14\" y=\"\(f((top + H - bottom) / 2))\" text-anchor=\"middle\" transform=\"rotate(-90 14 \(f((top + H - bottom) / 2)))\">loss</text>\n"
        for (name, pts, color) in [("train", train, "#1f77b4"), ("eval", eval, "#d62728")] where !pts.isEmpty {
            let line = pts.map { "\(f(x($0.step))),\(f(y($0.loss)))" }.joined(separator: " ")
            s += "<polyline class=\"\(name)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\" points=\"\(line)\"/>\n"
            s += "<g class=\"\(name)-points\" fill=\"\(color)\">\n"
            for p in pts {
                s += "<circle cx=\"\(f(x(p.step)))\" cy=\"\(f(y(p.loss)))\" r=\"2.5\"><title>step \(p.step): \(name == "train" ? "loss" : "eval loss") \(String(format: "%.6f", p.loss))</title></circle>\n"
            }
            s += "</g>\n"
        }
        // Legend.
        var ly = top + 4
        for (name, pts, color) in [("training loss", train, "#1f77b4"), ("eval loss", eval, "#d62728")] where !pts.isEmpty {
            s += "<line x1=\"\(f(W - right - 130))\" y1=\"\(f(ly))\" x2=\"\(f(W - right - 110))\" y2=\"\(f(ly))\" stroke=\"\(color)\" stroke-width=\"2\"/>\n"
            s += "<text x=\"\(f(W - right - 104))\" y=\"\(f(ly + 4))\">\(name)</text>\n"
            ly += 16
        }
        s += "<text x=\"\(f(left))\" y=\"18\">\(escape(title))</text>\n</svg>\n"
        return s
    }

    /// Reads `metricsPath` and writes the plot to `svgPath` (temporary file + rename).
    public static func write(metricsPath: String, to svgPath: String, title: String = "loss") throws {
        guard let data = FileManager.default.contents(atPath: metricsPath) else {
            throw CausalError.io(path: metricsPath, reason: "cannot read")
        }
        let (train, eval) = points(metricsJSONL: String(decoding: data, as: UTF8.self))
        let text = svg(train: train, eval: eval, title: title)
        try LlamaCheckpoint.atomicWrite(svgPath) { try $0.write(contentsOf: Data(text.utf8)) }
    }

    /// The smallest of 1, 2, 2.5, 5 × 10^k at or above v.
    static func niceCeiling(_ v: Double) -> Double {
        let e = pow(10, floor(log10(v)))
        for m in [1.0, 2, 2.5, 5, 10] where m * e >= v * (1 - 1e-12) { return m * e }
        return 10 * e
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
