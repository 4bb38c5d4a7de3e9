// The Swift bindings against the real default model (SmolLM2-135M-Instruct), with XCTest.
// Run by bindings/swift/run-tests.sh; LAMINA_TEST_MODEL names a model file (unset: the
// default model, fetched and cached), LAMINA_CLI the command line to compare with.
import Foundation
import XCTest

@testable import Lamina

private let prompt = "The three primary colors are"
private let template = "Review: {text}\nSentiment:"
private let reviews: [(String, String)] = [
    ("Absolutely delicious, I buy a box every month.", "positive"),
    ("Stale and tasteless, the bag arrived torn.", "negative"),
    ("My kids love these, great value for the price.", "positive"),
    ("Terrible aftertaste, I threw the rest away.", "negative"),
    ("Fresh, crunchy and not too sweet. Perfect.", "positive"),
    ("It made my dog sick. Never again.", "negative"),
    ("Best coffee I have had in years.", "positive"),
    ("Arrived melted and the seal was broken.", "negative"),
]

private func greedy(_ maxTokens: UInt32 = 16) -> GenerateParams {
    GenerateParams(maxTokens: maxTokens, temperature: 0)
}

private func reviewData() -> TrainingData {
    .examples(examples: reviews.map { .textLabel(text: $0.0, label: $0.1) }, template: template)
}

private let model: String? = {
    let m = ProcessInfo.processInfo.environment["LAMINA_TEST_MODEL"] ?? ""
    return m.isEmpty ? nil : m
}()

/// One engine for the whole suite: loading is the slow part.
private let shared: Engine = try! Engine(modelPath: model, options: EngineOptions())

final class Pieces: TokenListener, @unchecked Sendable {
    var pieces: [String] = []
    func onToken(piece: String) -> Bool {
        pieces.append(piece)
        return pieces.count < 3
    }
}

final class Events: TrainListener, @unchecked Sendable {
    var events: [TrainEvent] = []
    var onStep: (() -> Void)?
    func onEvent(event: TrainEvent) -> Bool {
        events.append(event)
        if case .step = event { onStep?() }
        return true
    }
}

struct ListenerBug: Error, CustomStringConvertible {
    var description: String { "listener bug" }
}

final class Throwing: TokenListener, @unchecked Sendable {
    func onToken(piece: String) throws -> Bool {
        throw ListenerBug()
    }
}

final class LaminaTests: XCTestCase {
    func test1GreedyGenerationMatchesTheCommandLine() throws {
        let g = try shared.generate(prompt: prompt, params: greedy(), listener: nil)
        let cli = ProcessInfo.processInfo.environment["LAMINA_CLI"]!
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: cli)
        proc.arguments = ["generate", "--prompt", prompt, "--temperature", "0", "--max-tokens", "16"]
            + (model.map { ["--model", $0] } ?? [])
        let out = Pipe()
        proc.standardOutput = out
        proc.standardError = FileHandle.nullDevice
        try proc.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        proc.waitUntilExit()
        XCTAssertEqual(proc.terminationStatus, 0)
        var text = String(decoding: data, as: UTF8.self)
        XCTAssertTrue(text.hasSuffix("\n"))
        text.removeLast()
        XCTAssertEqual(g.text, text)
        XCTAssertGreaterThan(g.tokensGenerated, 0)
    }

    func test2ListenerStreamsPiecesAndStopsEarly() throws {
        let l = Pieces()
        let g = try shared.generate(prompt: prompt, params: greedy(32), listener: l)
        XCTAssertEqual(l.pieces.count, 3)
        XCTAssertEqual(g.stopReason, .listener)
        XCTAssertEqual(g.text, l.pieces.joined())
    }

    func test3TwoChatTurns() throws {
        var messages = [ChatMessage(role: "user", content: "Name a fruit that is yellow.")]
        let first = try shared.chat(messages: messages, params: greedy(24), listener: nil)
        XCTAssertFalse(first.text.isEmpty)
        messages.append(ChatMessage(role: "assistant", content: first.text))
        messages.append(ChatMessage(role: "user", content: "And one that is red?"))
        let second = try shared.chat(messages: messages, params: greedy(24), listener: nil)
        XCTAssertFalse(second.text.isEmpty)
        XCTAssertLessThan(second.prefillTokens, second.promptTokens, "the first turn comes from the cache")
    }

    func test4ClassifyGivesProbabilitiesThatSumToOne() throws {
        let scores = try shared.classify(
            text: "I loved it, delicious!", labels: ["positive", "negative"], template: template)
        XCTAssertEqual(scores.map(\.label), ["positive", "negative"])
        XCTAssertEqual(scores.map(\.probability).reduce(0, +), 1.0, accuracy: 1e-6)
    }

    func test5FineTuneSaveLoadAndSwapAdapters() throws {
        let l = Events()
        let config = TrainConfig(
            epochs: 2, maxSteps: 4, batchSize: 4, maxLength: 64, learningRate: 5e-3,
            validationFraction: 0)
        let report = try shared.fineTune(data: reviewData(), config: config, listener: l)
        XCTAssertEqual(report.steps, 4)
        XCTAssertEqual(report.trainExamples, UInt32(reviews.count))
        let steps: [UInt32] = l.events.compactMap {
            if case .step(let step, _, _, _, _, _, _) = $0 { return step }
            return nil
        }
        XCTAssertEqual(steps, [1, 2, 3, 4])

        let p = template.replacingOccurrences(of: "{text}", with: "Stale, and it tasted of cardboard.")
        let base = try shared.generate(prompt: p, params: greedy(8), listener: nil)
        let labels = ["positive", "negative"]
        let baseScores = try shared.classify(
            text: "Stale, and it tasted of cardboard.", labels: labels, template: template)
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("lamina-adapter-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try shared.saveAdapter(path: dir.path)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.appendingPathComponent("adapter_config.json").path))
        try shared.loadAdapter(path: dir.path, name: "reviews")
        try shared.setAdapters(adapters: [AdapterWeight(name: "reviews", scale: 1)])
        let tuned = try shared.generate(prompt: p, params: greedy(8), listener: nil)
        XCTAssertNotEqual(base.text, tuned.text)
        let tunedScores = try shared.classify(
            text: "Stale, and it tasted of cardboard.", labels: labels, template: template)
        XCTAssertGreaterThan(abs(tunedScores[0].probability - baseScores[0].probability), 1e-3)
        try shared.clearAdapters()
        XCTAssertEqual(try shared.generate(prompt: p, params: greedy(8), listener: nil).text, base.text)
    }

    func test6CancelFromAnotherThread() throws {
        let stepped = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        let l = Events()
        l.onStep = { stepped.signal() }
        let config = TrainConfig(epochs: 50, batchSize: 2, maxLength: 64, validationFraction: 0)
        nonisolated(unsafe) var caught: Error?
        Thread.detachNewThread {
            do {
                _ = try shared.fineTune(data: reviewData(), config: config, listener: l)
            } catch {
                caught = error
            }
            done.signal()
        }
        XCTAssertEqual(stepped.wait(timeout: .now() + 300), .success)
        let asked = Date()
        shared.cancel()
        XCTAssertEqual(done.wait(timeout: .now() + 120), .success)
        guard case .Cancelled = caught as? LaminaError else {
            return XCTFail("expected Cancelled, got \(String(describing: caught))")
        }
        XCTAssertLessThan(Date().timeIntervalSince(asked), 60)
    }

    func test7TypedErrors() throws {
        XCTAssertThrowsError(try Engine(modelPath: "/no/such/model.gguf", options: EngineOptions())) {
            guard case LaminaError.ModelNotFound(let message) = $0 else {
                return XCTFail("expected ModelNotFound, got \($0)")
            }
            XCTAssertTrue(message.contains("/no/such/model.gguf"))
        }
        let bad = TrainingData.examples(
            examples: [
                .promptCompletion(prompt: "Hi", completion: " there"),
                .textLabel(text: "no prompt here", label: "x"),
            ], template: nil)
        XCTAssertThrowsError(try shared.fineTune(data: bad, config: TrainConfig(maxSteps: 1), listener: nil)) {
            guard case LaminaError.InvalidData(let message) = $0 else {
                return XCTFail("expected InvalidData, got \($0)")
            }
            XCTAssertTrue(message.contains("item 2"), message)
        }
        XCTAssertThrowsError(try shared.generate(prompt: prompt, params: greedy(8), listener: Throwing())) {
            guard case LaminaError.Listener(let message) = $0 else {
                return XCTFail("expected Listener, got \($0)")
            }
            XCTAssertTrue(message.contains("listener bug"), message)
        }
        XCTAssertGreaterThan(try shared.generate(prompt: prompt, params: greedy(4), listener: nil).tokensGenerated, 0)
    }

    func test8TokenizeAndDeviceInfo() throws {
        XCTAssertGreaterThanOrEqual(try shared.tokenize(text: "Hello world").count, 2)
        let info = shared.deviceInfo()
        XCTAssertFalse(info.backend.isEmpty)
        XCTAssertGreaterThanOrEqual(info.peakBytes, info.bytesInUse)
    }
}
