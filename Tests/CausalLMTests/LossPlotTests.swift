import Foundation
import XCTest
import CausalLM

/// loss.svg: the points read back from the SVG are the metrics' values, placed on the axes it declares.
final class LossPlotTests: XCTestCase {
    let metrics = """
    {"step": 1, "epoch": 0, "loss": 2.5, "lr": 1e-05}
    {"step": 2, "epoch": 0, "loss": 1.75, "lr": 1e-05}
    {"step": 2, "eval_loss": 1.9, "eval_perplexity": 6.7}
    {"step": 3, "epoch": 0, "loss": 1.25, "lr": 1e-05}
    {"step": 3, "epoch": 0, "loss": 1.125, "lr": 1e-05}
    {"step": 4, "epoch": 1, "loss": 0.5, "lr": 1e-05}
    {"step": 4, "eval_loss": 0.875, "eval_perplexity": 2.4}
    """

    func matches(_ pattern: String, in s: String) -> [[String]] {
        let re = try! NSRegularExpression(pattern: pattern)
        return re.matches(in: s, range: NSRange(s.startIndex..., in: s)).map { m in
            (1..<m.numberOfRanges).map { String(s[Range(m.range(at: $0), in: s)!]) }
        }
    }

    func testPointsAndSVGRoundTrip() throws {
        let (train, eval) = LossPlot.points(metricsJSONL: metrics)
        // Step 3 was logged twice (a resumed run): the last value wins.
        XCTAssertEqual(train.map(\.step), [1, 2, 3, 4])
        XCTAssertEqual(train.map(\.loss), [2.5, 1.75, 1.125, 0.5])
        XCTAssertEqual(eval, [LossPlot.Point(step: 2, loss: 1.9), LossPlot.Point(step: 4, loss: 0.875)])

        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-plot-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try metrics.write(toFile: dir + "/metrics.jsonl", atomically: true, encoding: .utf8)
        try LossPlot.write(metricsPath: dir + "/metrics.jsonl", to: dir + "/loss.svg")
        let svg = try String(contentsOfFile: dir + "/loss.svg", encoding: .utf8)
        XCTAssertTrue(svg.hasPrefix("<svg "))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["loss.svg", "metrics.jsonl"])   // no temp left

        // The values in the point titles.
        let titled = matches(#"<circle cx="([0-9.]+)" cy="([0-9.]+)" r="[0-9.]+"><title>step (\d+): (loss|eval loss) ([0-9.]+)</title>"#, in: svg)
        XCTAssertEqual(titled.filter { $0[3] == "loss" }.map { Double($0[4])! }, [2.5, 1.75, 1.125, 0.5])
        XCTAssertEqual(titled.filter { $0[3] == "eval loss" }.map { Int($0[2])! }, [2, 4])
        XCTAssertEqual(titled.filter { $0[3] == "eval loss" }.map { Double($0[4])! }, [1.9, 0.875])
        // The positions: invert the axes from the tick labels (y ticks 0 ... top value; x ticks first ... last step).
        let yt = matches(#"<text class="ytick" x="[0-9.]+" y="([0-9.]+)" text-anchor="end" data-value="([0-9.e+-]+)""#, in: svg)
            .map { (y: Double($0[0])! - 4, v: Double($0[1])!) }
        let xt = matches(#"<text class="xtick" x="([0-9.]+)" y="[0-9.]+" text-anchor="middle" data-value="(\d+)""#, in: svg)
            .map { (x: Double($0[0])!, v: Double($0[1])!) }
        XCTAssertEqual(yt.first?.v, 0)
        XCTAssertEqual(yt.last?.v, 2.5)
        XCTAssertEqual(xt.first?.v, 1); XCTAssertEqual(xt.last?.v, 4)
        let (y0, y1) = (yt.first!, yt.last!), (x0, x1) = (xt.first!, xt.last!)
        for t in titled {
            let step = (Double(t[0])! - x0.x) / (x1.x - x0.x) * (x1.v - x0.v) + x0.v
            let loss = (Double(t[1])! - y0.y) / (y1.y - y0.y) * (y1.v - y0.v) + y0.v
            XCTAssertEqual(step, Double(t[2])!, accuracy: 0.01)
            XCTAssertEqual(loss, Double(t[4])!, accuracy: 0.01)
        }
        // The polylines join the same points.
        let lines = matches(#"<polyline class="(train|eval)" [^>]*points="([^"]+)""#, in: svg)
        XCTAssertEqual(lines.map { $0[0] }, ["train", "eval"])
        XCTAssertEqual(lines[0][1].split(separator: " ").count, 4)
        XCTAssertEqual(lines[1][1].split(separator: " ").count, 2)
    }

    func testMissingMetricsIsAnError() {
        XCTAssertThrowsError(try LossPlot.write(metricsPath: "/nonexistent/metrics.jsonl", to: "/tmp/x.svg")) { e in
            XCTAssertTrue("\(e)".contains("/nonexistent/metrics.jsonl"), "\(e)")
        }
    }
}
