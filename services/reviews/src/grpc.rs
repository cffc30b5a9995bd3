//! The gRPC face of reviews: [`ReviewApi`] reads the caller and metadata off each request,
//! calls the [`ReviewHandler`] and wraps its answer.

use std::sync::Arc;

use shopmesh_kit::access::Caller;
use shopmesh_kit::locale;
use shopmesh_proto::shopmesh::reviews::v1::review_service_server::ReviewService;
use shopmesh_proto::shopmesh::reviews::v1::{
    CreateReviewRequest, DeleteReviewRequest, DeleteReviewResponse, ListProductReviewsRequest,
    ListProductReviewsResponse, ListReviewsForModerationRequest, ListReviewsForModerationResponse,
    ModerateReviewRequest, RecountRatingRequest, RecountRatingResponse, ReportReviewRequest,
    ReportReviewResponse, Review, UpdateReviewRequest, VoteHelpfulRequest, VoteHelpfulResponse,
};
use tonic::{Request, Response, Status};

use crate::handler::ReviewHandler;

/// The gRPC face of a shared [`ReviewHandler`].
#[derive(Clone)]
pub struct ReviewApi(pub Arc<ReviewHandler>);

#[tonic::async_trait]
impl ReviewService for ReviewApi {
    async fn list_product_reviews(
        &self,
        request: Request<ListProductReviewsRequest>,
    ) -> Result<Response<ListProductReviewsResponse>, Status> {
        let viewer = Caller::optional(&request);
        let accepted = locale::accepted(request.metadata());
        Ok(Response::new(
            self.0.list(viewer, request.get_ref(), &accepted).await?,
        ))
    }

    async fn create_review(
        &self,
        request: Request<CreateReviewRequest>,
    ) -> Result<Response<Review>, Status> {
        let caller = Caller::of(&request)?;
        let accepted = locale::accepted(request.metadata());
        Ok(Response::new(
            self.0.create(caller, request.get_ref(), &accepted).await?,
        ))
    }

    async fn update_review(
        &self,
        request: Request<UpdateReviewRequest>,
    ) -> Result<Response<Review>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.0.update(caller, request.get_ref()).await?,
        ))
    }

    async fn delete_review(
        &self,
        request: Request<DeleteReviewRequest>,
    ) -> Result<Response<DeleteReviewResponse>, Status> {
        let caller = Caller::of(&request)?;
        self.0.delete(caller, &request.get_ref().id).await?;
        Ok(Response::new(DeleteReviewResponse {}))
    }

    async fn report_review(
        &self,
        request: Request<ReportReviewRequest>,
    ) -> Result<Response<ReportReviewResponse>, Status> {
        let caller = Caller::of(&request)?;
        let report = request.get_ref();
        self.0.report(caller, &report.id, &report.reason).await?;
        Ok(Response::new(ReportReviewResponse {}))
    }

    async fn vote_helpful(
        &self,
        request: Request<VoteHelpfulRequest>,
    ) -> Result<Response<VoteHelpfulResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.0.vote(caller, &request.get_ref().id).await?,
        ))
    }

    async fn moderate_review(
        &self,
        request: Request<ModerateReviewRequest>,
    ) -> Result<Response<Review>, Status> {
        Ok(Response::new(self.0.moderate(request.get_ref()).await?))
    }

    async fn recount_rating(
        &self,
        request: Request<RecountRatingRequest>,
    ) -> Result<Response<RecountRatingResponse>, Status> {
        Ok(Response::new(
            self.0.recount(&request.get_ref().product_id).await?,
        ))
    }

    async fn list_reviews_for_moderation(
        &self,
        request: Request<ListReviewsForModerationRequest>,
    ) -> Result<Response<ListReviewsForModerationResponse>, Status> {
        Ok(Response::new(
            self.0.moderation_queue(request.get_ref()).await?,
        ))
    }
}
