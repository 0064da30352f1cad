package pipeline_test

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/s3test"
	"github.com/exportd/exportd/internal/stagetest"
	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/storage"
)

// TestExportS3 publishes exports to an S3 server that verifies signatures
// (versitygw): the presigned links download with net/http, the objects with
// the AWS CLI and the SDK, and a tampered or expired link is refused.
func TestExportS3(t *testing.T) {
	ctx := t.Context()
	srv := s3test.Start(t)
	env := stagetest.StartPG(t)
	files := newFS(t)
	_, err := gen.Load(ctx, env.Admin, files, gen.Config{Seed: 17, Tenants: 4, Rows: 6000, Files: true, CreateSchema: true})
	require.NoError(t, err)
	rep := env.Replicate(t, env.Config())
	v := rep.CatchUp(t, ctx, env)

	out, err := storage.NewS3(ctx, srv.S3Config("published"), testLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { out.Close() })
	spec := pipeline.DefaultSpec()
	plan, err := spec.Resolve(v.Tables())
	require.NoError(t, err)
	ex := pipeline.NewExporter(spec, files, out, pipeline.ExportConfig{}, testLogger(t), nil)

	m, err := ex.Export(ctx, v, "2", "s3-req")
	require.NoError(t, err)
	zips := download(t, func(u string) []byte { return httpGet(t, u) }, m)
	checkCSVs(t, ctx, env.Admin, plan, v, zips[pipeline.PartData], "2")

	// The same objects through the SDK and through the AWS CLI.
	client := srv.Client(t)
	for _, p := range m.Parts {
		obj, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(srv.Bucket), Key: aws.String("published/" + p.Key)})
		require.NoError(t, err)
		body, err := io.ReadAll(obj.Body)
		obj.Body.Close()
		require.NoError(t, err)
		require.EqualValues(t, p.SizeBytes, len(body), p.Part)
	}
	awsBin, err := exec.LookPath("aws")
	if err != nil && os.Getenv("CI") == "" {
		t.Skip("aws CLI not installed")
	}
	require.NoError(t, err, "the AWS CLI (.ci/run installs awscli)")
	dst := filepath.Join(t.TempDir(), "master.csv")
	cmd := exec.CommandContext(ctx, awsBin, "--endpoint-url", srv.Endpoint, "s3api", "get-object",
		"--bucket", srv.Bucket, "--key", "published/"+m.Master.Key, dst)
	cmd.Env = []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey,
		"AWS_DEFAULT_REGION=" + srv.Region, "AWS_PAGER=", "HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}
	outp, err := cmd.CombinedOutput()
	require.NoError(t, err, "aws s3api get-object: %s", outp)
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	require.Equal(t, httpGet(t, m.Master.URL), got)

	// A tampered link is refused.
	u, err := url.Parse(m.Master.URL)
	require.NoError(t, err)
	q := u.Query()
	sig := q.Get("X-Amz-Signature")
	require.NotEmpty(t, sig)
	q.Set("X-Amz-Signature", strings.Repeat("0", len(sig)))
	u.RawQuery = q.Encode()
	require.Equal(t, http.StatusForbidden, status(t, u.String()))
	u, _ = url.Parse(m.Master.URL)
	u.Path = strings.Replace(u.Path, "master.csv", "manifest.json", 1)
	require.Equal(t, http.StatusForbidden, status(t, u.String()), "a link signed for one key opens no other")

	// A link past its expiry is refused.
	short := pipeline.NewExporter(spec, files, out, pipeline.ExportConfig{LinkTTL: 2 * time.Second}, testLogger(t), nil)
	m2, err := short.Export(ctx, v, "3", "s3-short")
	require.NoError(t, err)
	deadline := time.Now().Add(30 * time.Second)
	for status(t, m2.Master.URL) == http.StatusOK {
		require.True(t, time.Now().Before(deadline), "the link still works 30s after its 2s expiry")
		time.Sleep(200 * time.Millisecond)
	}
	require.Equal(t, http.StatusForbidden, status(t, m2.Master.URL))
	require.True(t, time.Now().After(m2.Master.ExpiresAt.Add(-time.Second)), "refused before its expiry")
}

func status(t *testing.T, u string) int {
	t.Helper()
	resp, err := http.Get(u)
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
