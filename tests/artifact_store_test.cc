// ArtifactStore: atomic writes, content-addressed uploads (dedup, hash verification, nothing
// left behind by abandoned or failed uploads), job locks and deletion.
#include "server/artifact_store.h"

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sq::server {
namespace {
namespace fs = std::filesystem;

class ArtifactStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("sq_store_test_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    auto store = ArtifactStore::Open(root_.string());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  void TearDown() override { fs::remove_all(root_); }

  size_t CountEntries(const fs::path& dir) {
    size_t n = 0;
    for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) ++n;
    return n;
  }

  fs::path root_;
  std::unique_ptr<ArtifactStore> store_;
};

TEST_F(ArtifactStoreTest, WriteFileAtomicReplacesWholeFileAndLeavesNoTemporaries) {
  std::string path = (root_ / "x.json").string();
  ASSERT_TRUE(WriteFileAtomic(path, "first").ok());
  ASSERT_TRUE(WriteFileAtomic(path, "second, longer content").ok());
  auto text = ReadFileToString(path);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "second, longer content");
  for (const auto& e : fs::directory_iterator(root_)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  }
}

TEST_F(ArtifactStoreTest, WriteFileAtomicIntoMissingDirectoryFailsWithoutDebris) {
  absl::Status st = WriteFileAtomic((root_ / "no/such/dir/f").string(), "x");
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
}

TEST_F(ArtifactStoreTest, Sha256MatchesKnownVector) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_F(ArtifactStoreTest, UploadCommitsContentAddressedModel) {
  std::vector<StoredFile> files{{"m.onnx", 5, ""}, {"w/m.data", 3, Sha256Hex("xyz")}};
  auto session = store_->BeginUpload(files);
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_TRUE((*session)->Append("hel").ok());
  ASSERT_TRUE((*session)->Append("loxy").ok());  // spans the file boundary
  ASSERT_TRUE((*session)->Append("z").ok());
  auto result = (*session)->Commit();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->deduplicated);
  EXPECT_EQ(result->files[0].sha256, Sha256Hex("hello"));
  EXPECT_EQ(result->model_id, Sha256Hex(ManifestText(result->files)));
  EXPECT_TRUE(store_->HasModel(result->model_id));
  auto stored = store_->GetModelFiles(result->model_id);
  ASSERT_TRUE(stored.ok());
  ASSERT_EQ(stored->size(), 2u);
  EXPECT_EQ(*ReadFileToString(store_->ModelPath(result->model_id, (*stored)[0])), "hello");
  EXPECT_EQ(*ReadFileToString(root_ / "models" / result->model_id / "files/w/m.data"), "xyz");
  EXPECT_EQ(CountEntries(root_ / "tmp"), 0u);

  // The same bytes again: recognised, nothing new written.
  auto again = store_->BeginUpload(files);
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE((*again)->Append("helloxyz").ok());
  auto second = (*again)->Commit();
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->deduplicated);
  EXPECT_EQ(second->model_id, result->model_id);
  EXPECT_EQ(CountEntries(root_ / "tmp"), 0u);
}

TEST_F(ArtifactStoreTest, HashMismatchIsInvalidArgumentAndLeavesNothing) {
  auto session = store_->BeginUpload({{"m.onnx", 5, Sha256Hex("world")}});
  ASSERT_TRUE(session.ok());
  ASSERT_TRUE((*session)->Append("hello").ok());
  auto result = (*session)->Commit();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("sha256 mismatch"), std::string::npos);
  EXPECT_EQ(CountEntries(root_ / "tmp"), 0u);
  EXPECT_EQ(CountEntries(root_ / "models"), 0u);
}

TEST_F(ArtifactStoreTest, AbandonedOrShortOrLongUploadLeavesNothing) {
  {
    auto session = store_->BeginUpload({{"m.onnx", 100, ""}});
    ASSERT_TRUE(session.ok());
    ASSERT_TRUE((*session)->Append(std::string(40, 'a')).ok());
    EXPECT_GT(CountEntries(root_ / "tmp"), 0u);
  }  // dropped mid-way (client disconnected)
  EXPECT_EQ(CountEntries(root_ / "tmp"), 0u);

  auto short_upload = store_->BeginUpload({{"m.onnx", 10, ""}});
  ASSERT_TRUE(short_upload.ok());
  ASSERT_TRUE((*short_upload)->Append("abc").ok());
  EXPECT_EQ((*short_upload)->Commit().status().code(), absl::StatusCode::kInvalidArgument);

  auto long_upload = store_->BeginUpload({{"m.onnx", 2, ""}});
  ASSERT_TRUE(long_upload.ok());
  EXPECT_EQ((*long_upload)->Append("abc").code(), absl::StatusCode::kInvalidArgument);
  long_upload->reset();
  EXPECT_EQ(CountEntries(root_ / "tmp"), 0u);
  EXPECT_EQ(CountEntries(root_ / "models"), 0u);
}

TEST_F(ArtifactStoreTest, RejectsHostileNames) {
  for (const char* name : {"../x.onnx", "/etc/passwd", "a/../../b", "a//b", "", "a\\b", "./a"}) {
    EXPECT_EQ(store_->BeginUpload({{name, 1, ""}}).status().code(), absl::StatusCode::kInvalidArgument)
        << name;
  }
  EXPECT_EQ(store_->BeginUpload({{"a", 1, ""}, {"a", 1, ""}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateRelativeName("sub/dir/w.bin").ok());
  // Found by fuzzing (upload_fuzz): a newline in a name forged a second manifest line, so a
  // committed one-file model read back as two files (and its id could collide with another
  // model's manifest). Control characters are refused, shown escaped.
  auto forged = store_->BeginUpload({{"a\n0000 1 b.onnx", 1, ""}});
  ASSERT_FALSE(forged.ok());
  EXPECT_EQ(forged.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(forged.status().message()), ::testing::HasSubstr("a\\n0000"));
  for (const char* name : {"tab\there", "bell\a", "del\x7f"}) {
    EXPECT_FALSE(ValidateRelativeName(name).ok()) << name;
  }
  EXPECT_TRUE(ValidateRelativeName("caf\xc3\xa9/w.bin").ok());  // UTF-8 is a name like any other
}

TEST_F(ArtifactStoreTest, JobIdsAreRandomHex) {
  std::string a = NewJobId(), b = NewJobId();
  EXPECT_TRUE(IsValidJobId(a));
  EXPECT_NE(a, b);
  EXPECT_FALSE(IsValidJobId("../../etc"));
  EXPECT_FALSE(IsValidJobId(std::string(32, 'G')));
}

TEST_F(ArtifactStoreTest, JobLockIsExclusiveUntilReleased) {
  std::string id = NewJobId();
  auto lock = store_->CreateJob(id);
  ASSERT_TRUE(lock.ok()) << lock.status();
  EXPECT_EQ(store_->TryLockJob(id).status().code(), absl::StatusCode::kFailedPrecondition);
  lock->reset();
  auto again = store_->TryLockJob(id);
  EXPECT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(store_->CreateJob(id).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(ArtifactStoreTest, JobRecordsListCancelAndDelete) {
  std::string id = NewJobId();
  auto lock = store_->CreateJob(id);
  ASSERT_TRUE(lock.ok());
  EXPECT_TRUE(store_->ListJobIds().empty());  // no record yet: invisible
  ASSERT_TRUE(store_->WriteJobRecord(id, "{}").ok());
  EXPECT_EQ(store_->ListJobIds(), std::vector<std::string>{id});
  EXPECT_FALSE(store_->CancelRequested(id));
  ASSERT_TRUE(store_->RequestCancel(id).ok());
  EXPECT_TRUE(store_->CancelRequested(id));
  lock->reset();
  ASSERT_TRUE(store_->DeleteJob(id).ok());
  EXPECT_TRUE(store_->ListJobIds().empty());
  EXPECT_EQ(store_->ReadJobRecord(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->DeleteJob(id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CountEntries(root_ / "tmp"), 0u);
}

TEST_F(ArtifactStoreTest, OpenRemovesStaleTemporaries) {
  fs::path stale = root_ / "tmp" / "upload-old";
  fs::create_directories(stale);
  std::ofstream(stale / "part") << "x";
  fs::last_write_time(stale, fs::file_time_type::clock::now() - std::chrono::hours(1));
  auto reopened = ArtifactStore::Open(root_.string());
  ASSERT_TRUE(reopened.ok());
  EXPECT_FALSE(fs::exists(stale));
}


// A crashed upload leaves its temporary directory unlocked; a live one is flock()ed. The
// sweep (at Open and before every upload) removes exactly the abandoned ones.
TEST_F(ArtifactStoreTest, SweepRemovesUploadsAbandonedByACrashAndKeepsLiveOnes) {
  auto live = store_->BeginUpload({{"m.onnx", 4, ""}});
  ASSERT_TRUE(live.ok()) << live.status();
  ASSERT_TRUE((*live)->Append("ab").ok());

  // A child process starts an upload, writes some bytes and dies without cleaning up.
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto s = ArtifactStore::Open(root_.string());
    if (!s.ok()) ::_exit(2);
    auto u = (*s)->BeginUpload({{"big.onnx", 1 << 20, ""}});
    if (!u.ok() || !(*u)->Append(std::string(4096, 'x')).ok()) ::_exit(3);
    ::_exit(0);  // no destructors: exactly what a SIGKILL leaves
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  ASSERT_EQ(CountEntries(root_ / "tmp") > 0, true);
  size_t before = 0;
  for (const auto& e : fs::directory_iterator(root_ / "tmp")) before += e.is_directory();
  EXPECT_EQ(before, 2u);  // ours and the dead child's

  // Within the grace period nothing goes; after it only the dead upload does.
  EXPECT_EQ(store_->SweepTemp(absl::Hours(1)), 0);
  EXPECT_EQ(store_->SweepTemp(absl::ZeroDuration()), 1);
  size_t after = 0;
  for (const auto& e : fs::directory_iterator(root_ / "tmp")) after += e.is_directory();
  EXPECT_EQ(after, 1u);
  // The mark is a lock on a regular file inside the folder (flock on a directory does not
  // reach other NFS clients), and it does not travel into the stored model.
  for (const auto& e : fs::directory_iterator(root_ / "tmp")) {
    EXPECT_TRUE(fs::is_regular_file(e.path() / ".lock")) << e.path();
  }
  ASSERT_TRUE((*live)->Append("cd").ok());
  auto done = (*live)->Commit();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(CountEntries(root_ / "tmp"), 0u);
  EXPECT_FALSE(fs::exists(root_ / "models" / done->model_id / ".lock"));
}

}  // namespace
}  // namespace sq::server
